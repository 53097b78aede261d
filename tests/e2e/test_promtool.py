"""The /metrics page and the example alert rules, checked by Prometheus's own promtool."""

import os
import subprocess

from support.alertmanager import Receiver
from support.tools import require_tool
from support.wait import wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_metrics_pass_promtool_with_every_family_populated(daemon_factory, short_tmp):
    promtool = require_tool("promtool", "prometheus")
    rx = Receiver()
    d = daemon_factory(agent={"health_check": {"cpu_threshold": 10, "threshold_duration": 0}},
                       hooks=[{"on": ["dead"], "command": ["/bin/true"]}],
                       alertmanager={"urls": [rx.url], "labels": {"env": 'a"b\\c'}},
                       webhooks=[{"url": rx.url + "/hook?token=x"}]).start()
    d.post({"agent_id": "ok", "pid": os.getpid(), "cpu": 1.0, "memory": 1000})
    d.post({"agent_id": "hot", "pid": os.getpid(), "cpu": 90.0})
    d.post({"agent_id": "bad", "pid": os.getpid(), "cpu": 900})
    crashy = d.unix_agent("crashy", interval=0.1)
    crashy.kill()
    crashy.wait(5)
    d.wait_state("crashy", "dead")
    d.wait_state("hot", "over_threshold")
    status, headers, text = d.get("/metrics")
    assert status == 200
    wait_for(lambda: len(rx.posts) >= 2, what="the alert and the webhook delivered")
    status, headers, text = d.get("/metrics")
    rx.close()
    assert "token=x" not in text  # a webhook's secret in its URL stays out of the metrics
    for family in ("hbdaemon_agent_state", "hbdaemon_heartbeats_rejected_total",
                   "hbdaemon_events_total", "hbdaemon_agent_memory_bytes",
                   "hbdaemon_alerts_sent_total", "hbdaemon_alerts_last_success_timestamp_seconds"):
        assert f"# TYPE {family} " in text
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), check.stdout + check.stderr


def test_example_alert_rules_pass_promtool():
    promtool = require_tool("promtool", "prometheus")
    check = subprocess.run([promtool, "check", "rules", os.path.join(REPO, "docs/prometheus-alerts.yml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 5 rules found" in check.stdout

"""Alerts that reach a person: the real daemon pushing to a real Alertmanager (Debian's
prometheus-alertmanager) that notifies a webhook receiver run by the test, and the
daemon's own webhooks."""

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from support.alertmanager import Alertmanager, Receiver, am_alerts
from support.tools import require_tool
from support.wait import wait_for

pytestmark = pytest.mark.timeout(120)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def receiver():
    made = []

    def make(mode="ok"):
        made.append(Receiver(mode))
        return made[-1]
    yield make
    for r in made:
        r.close()


@pytest.fixture
def alertmanager(short_tmp):
    made = []

    def make(receiver_url):
        made.append(Alertmanager(short_tmp, receiver_url).start())
        return made[-1]
    yield make
    for am in made:
        am.kill()


def notifications(rx, agent_id, status):
    """Alertmanager's notifications at `rx` that carry `agent_id`'s alert in `status`."""
    return [n for n in rx.docs("/am") if (status, agent_id) in am_alerts(n)]


def hbctl(daemon, *args):
    out = subprocess.run([sys.executable, "-m", "hbdaemon.ctl", "--url",
                          f"http://127.0.0.1:{daemon.port}", *args],
                         capture_output=True, text=True, timeout=30)
    return out.returncode, out.stdout + out.stderr


def am_config(am, **more):
    return {"alertmanager": dict({"urls": [am.url], "resend_interval": "1s"}, **more)}


def test_kill_9_fires_at_the_receiver_and_recovery_resolves(daemon_factory, receiver,
                                                            alertmanager):
    rx = receiver()
    am = alertmanager(rx.url)
    d = daemon_factory(**am_config(am, labels={"cluster": "eu-1"})).start()
    agent = d.unix_agent("web-1")
    d.wait_state("web-1", "healthy")
    agent.kill()  # SIGKILL
    agent.wait()
    wait_for(lambda: notifications(rx, "web-1", "firing"), 10, what="a firing notification")
    alert = notifications(rx, "web-1", "firing")[0]["alerts"][0]
    instance = alert["labels"]["instance"]
    assert alert["labels"] == {"alertname": "HeartbeatAgentDown", "agent_id": "web-1",
                               "state": "dead", "instance": instance, "severity": "critical",
                               "cluster": "eu-1", "role": "agent", "hbdaemon": instance}
    assert "is dead" in alert["annotations"]["summary"]
    assert "gone" in alert["annotations"]["reason"]
    assert alert["generatorURL"] == f"http://127.0.0.1:{d.port}/#agent=web-1"
    assert not notifications(rx, "web-1", "resolved")
    again = d.unix_agent("web-1")
    d.wait_state("web-1", "healthy")
    wait_for(lambda: notifications(rx, "web-1", "resolved"), 10, what="a resolved notification")
    again.terminate()
    again.wait()
    stats = d.get("/stats")[2]["alerting"]
    assert stats["firing"] == 0
    [am_stats] = stats["receivers"]
    assert am_stats["kind"] == "alertmanager" and am_stats["sent"] >= 2
    assert am_stats["last_success"] and am_stats["failed"] == 0


def test_a_hosts_daemon_down_inhibits_its_agents_alerts_with_the_shipped_rules(
        daemon_factory, receiver, short_tmp):
    with open(os.path.join(REPO, "docs", "alertmanager.yml")) as f:
        rules = yaml.safe_load(f)["inhibit_rules"]
    rx = receiver()
    am = Alertmanager(short_tmp, rx.url, inhibit_rules=rules).start()
    try:
        alerting = {"urls": [am.url], "resend_interval": "2s"}
        central = daemon_factory("central", alertmanager=alerting, manager={"agent_id": "central"},
                                 agent={"health_check": {"heartbeat_timeout": "1s"}}).start()
        host = daemon_factory("host-b", alertmanager=alerting, manager={
            "url": f"http://127.0.0.1:{central.port}", "agent_id": "host-b-hbdaemon",
            "heartbeat_interval": "0.2s", "reconnect_interval": "0.2s", "timeout": "2s"}).start()
        central.wait_state("host-b-hbdaemon", "healthy")
        app = host.unix_agent("app-1")
        app.kill()
        app.wait()
        wait_for(lambda: notifications(rx, "app-1", "firing"), 10, what="app-1 paged")
        host.signal(signal.SIGSTOP)  # the host's daemon hangs: central sees no heartbeats
        try:
            central.wait_state("host-b-hbdaemon", "no_heartbeat", timeout=5)
            wait_for(lambda: notifications(rx, "host-b-hbdaemon", "firing"), 10,
                     what="the host's daemon paged")

            def app_alert():
                found = [a for a in am.alerts() if a["labels"]["agent_id"] == "app-1"]
                return found and found[0]["status"]["state"] == "suppressed" and found[0]
            alert = wait_for(app_alert, 10, what="app-1's alert inhibited")
            assert alert["status"]["inhibitedBy"] and alert["labels"]["hbdaemon"] == "host-b-hbdaemon"
            [down] = [a for a in am.alerts() if a["labels"]["agent_id"] == "host-b-hbdaemon"]
            assert down["labels"]["role"] == "hbdaemon" and down["labels"]["instance"] == "central"
        finally:
            host.signal(signal.SIGCONT)
    finally:
        am.kill()


def test_a_planned_stop_pages_nobody(daemon_factory, receiver, alertmanager):
    rx = receiver()
    am = alertmanager(rx.url)
    d = daemon_factory(**am_config(am), webhooks=[{"url": rx.url + "/hook"}]).start()
    agent = d.unix_agent("batch-1")
    d.wait_state("batch-1", "healthy")
    agent.terminate()  # the agent says `stopping`
    agent.wait()
    d.wait_state("batch-1", "stopped")
    time.sleep(1.5)
    assert rx.posts == [] and am.alerts() == []


def test_a_silence_from_hbctl_holds_the_notification_while_the_alert_is_suppressed(
        daemon_factory, receiver, alertmanager):
    rx = receiver()
    am = alertmanager(rx.url)
    d = daemon_factory(**am_config(am), webhooks=[{"url": rx.url + "/hook"}]).start()
    code, out = hbctl(d, "silence", "web-*", "--for", "10m", "--reason", "replacing a disk")
    assert code == 0, out
    silence_id = out.split()[1].rstrip(":")
    agent = d.unix_agent("web-2")
    agent.kill()
    agent.wait()
    d.wait_state("web-2", "dead")
    wait_for(lambda: [a for a in am.alerts() if a["labels"]["agent_id"] == "web-2"], 10,
             what="the alert in Alertmanager")
    time.sleep(2)  # group_wait 0s, group_interval 1s: a notification would be here by now
    [alert] = [a for a in am.alerts() if a["labels"]["agent_id"] == "web-2"]
    assert alert["status"]["state"] == "suppressed"
    assert alert["status"]["silencedBy"] == [silence_id]
    assert rx.posts == []  # neither Alertmanager's notification nor the webhook
    assert d.agent("web-2")["silenced"] == silence_id
    code, out = hbctl(d, "silences")
    assert code == 0 and silence_id in out and "replacing a disk" in out
    assert hbctl(d, "unsilence", silence_id)[0] == 0
    wait_for(lambda: notifications(rx, "web-2", "firing"), 10,
             what="the notification once the silence is gone")
    code, out = hbctl(d, "unsilence", silence_id)
    assert code == 1 and "no silence" in out


def test_a_daemon_restart_while_an_alert_fires_resolves_nothing(daemon_factory, receiver,
                                                                alertmanager):
    rx = receiver()
    am = alertmanager(rx.url)
    d = daemon_factory(**am_config(am), agent={"health_check": {"heartbeat_timeout": "1s"}}
                       ).start()
    dead = d.unix_agent("db-1")
    dead.kill()
    dead.wait()
    hung = d.unix_agent("db-2")
    hung.send_signal(signal.SIGSTOP)  # alive, silent: no_heartbeat
    try:
        d.wait_state("db-1", "dead")
        d.wait_state("db-2", "no_heartbeat", timeout=5)
        wait_for(lambda: notifications(rx, "db-1", "firing") and
                 notifications(rx, "db-2", "firing"), 10, what="both alerts notified")
        assert d.stop() == 0
        time.sleep(1.5)  # down for longer than a resend_interval
        d.start()
        assert d.state("db-2") == "unknown"  # until its grace runs out: the alert goes on
        # Alertmanager would resolve an alert it stops hearing about within 4 intervals
        time.sleep(6)
        assert not notifications(rx, "db-1", "resolved")
        assert not notifications(rx, "db-2", "resolved")
        assert {a["labels"]["agent_id"] for a in am.alerts()} == {"db-1", "db-2"}
        assert d.state("db-2") == "no_heartbeat"
    finally:
        hung.kill()  # its connection went with the old daemon: a new process takes over
        hung.wait()
    again = d.unix_agent("db-2")
    d.wait_state("db-2", "healthy", timeout=5)
    wait_for(lambda: notifications(rx, "db-2", "resolved"), 10, what="db-2 resolved")
    again.kill()


def test_webhooks_carry_the_event_and_record_signed_with_the_secret(daemon_factory, receiver,
                                                                   short_tmp):
    rx = receiver()
    secret_file = os.path.join(short_tmp, "hook.secret")
    with open(secret_file, "w") as f:
        f.write("s3cret-value\n")
    d = daemon_factory(webhooks=[{"url": rx.url + "/hook", "secret_file": secret_file}]).start()
    agent = d.unix_agent("api-1")
    d.wait_state("api-1", "healthy")
    agent.kill()
    agent.wait()
    wait_for(lambda: rx.docs("/hook"), 10, what="the webhook")
    _, _, headers, raw, doc = rx.posts[0]
    expected = hmac.new(b"s3cret-value", raw, hashlib.sha256).hexdigest()
    assert headers["X-Hbdaemon-Signature"] == f"sha256={expected}"
    assert doc["alert"] == "firing" and doc["version"] == 1
    assert doc["event"]["agent_id"] == "api-1" and doc["event"]["to"] == "dead"
    assert doc["agent"]["state"] == "dead" and doc["agent"]["pid"] == agent.pid
    forged = hmac.new(b"another", raw, hashlib.sha256).hexdigest()
    assert headers["X-Hbdaemon-Signature"] != f"sha256={forged}"


def test_forgetting_a_failing_agent_resolves_its_alert_at_the_webhook(daemon_factory, receiver):
    rx = receiver()
    d = daemon_factory(webhooks=[{"url": rx.url + "/hook", "on": ["dead"]}]).start()
    agent = d.unix_agent("gone-1")
    d.wait_state("gone-1", "healthy")
    agent.kill()
    agent.wait()
    wait_for(lambda: rx.docs("/hook"), 10, what="the firing webhook")
    status, _, _ = d.request("DELETE", "/agents/gone-1")
    assert status == 200
    wait_for(lambda: len(rx.docs("/hook")) == 2, 10, what="the resolving webhook")
    firing, resolved = rx.docs("/hook")
    assert firing["alert"] == "firing" and resolved["alert"] == "resolved"
    assert resolved["event"]["kind"] == "forgotten" and resolved["event"]["agent_id"] == "gone-1"


def test_an_agent_forgotten_while_unknown_after_a_restart_resolves_where_it_fired(
        daemon_factory, receiver):
    """Found by an attack: the record is `unknown` after the restart while its alert still
    fires; the resolution goes to the webhooks of the alert's state, not of `unknown`."""
    rx = receiver()
    d = daemon_factory(agent={"health_check": {"heartbeat_timeout": "1s"}},
                       webhooks=[{"url": rx.url + "/silent", "on": ["no_heartbeat"]},
                                 {"url": rx.url + "/unknown", "on": ["unknown"]}]).start()
    assert d.post({"agent_id": "db-2", "pid": os.getpid()})[0] == 200
    d.wait_state("db-2", "no_heartbeat", timeout=5)
    wait_for(lambda: rx.docs("/silent"), 10, what="the firing webhook")
    assert d.stop() == 0
    d.start()
    assert d.state("db-2") == "unknown"
    wait_for(lambda: rx.docs("/unknown"), 10, what="the restart's unknown event")
    assert d.request("DELETE", "/agents/db-2")[0] == 200
    wait_for(lambda: len(rx.docs("/silent")) == 2, 10, what="the resolving webhook")
    assert [doc["alert"] for doc in rx.docs("/silent")] == ["firing", "resolved"]
    assert [doc["alert"] for doc in rx.docs("/unknown")] == [None]  # the restart's event only


def test_every_alertmanager_url_gets_every_alert_and_a_hung_one_holds_up_none(
        daemon_factory, receiver, alertmanager):
    rx, hang = receiver(), receiver("hang")
    am = alertmanager(rx.url)
    d = daemon_factory(alertmanager={"urls": [hang.url, am.url], "resend_interval": "1s",
                                     "timeout": "30s"}).start()
    agent = d.unix_agent("pair-1")
    d.wait_state("pair-1", "healthy")
    agent.kill()
    agent.wait()
    # the hung URL holds its own sender for 30 s; the other one's notification comes at once
    wait_for(lambda: notifications(rx, "pair-1", "firing"), 10, what="a firing notification")
    assert ("/api/v2/alerts" in [path for _, path in hang.arrivals])  # it was offered too
    receivers = {r["receiver"]: r for r in d.get("/stats")[2]["alerting"]["receivers"]}
    assert len(receivers) == 2 and any(r["sent"] >= 1 for r in receivers.values())


def test_a_failing_webhook_is_retried_with_backoff_then_given_up(daemon_factory, receiver):
    rx = receiver("fail")
    d = daemon_factory(webhooks=[{"url": rx.url + "/hook", "max_retries": 2,
                                  "backoff_base": "0.2s", "backoff_max": "0.3s"}]).start()
    agent = d.unix_agent("api-2")
    agent.kill()
    agent.wait()
    wait_for(lambda: len(rx.posts) == 3, 10, what="three attempts")
    gaps = [b[0] - a[0] for a, b in zip(rx.posts, rx.posts[1:])]
    assert gaps[0] >= 0.19 and gaps[1] >= 0.29  # 0.2 s, then doubled to the cap
    [hook] = d.get("/stats")[2]["alerting"]["receivers"]
    wait_for(lambda: d.get("/stats")[2]["alerting"]["receivers"][0]["dropped"] == 1, 5,
             what="the event given up")
    assert hook["failed"] >= 3 and "500" in hook["last_error"]
    metrics = d.get("/metrics")[2]
    assert 'hbdaemon_alerts_dropped_total{kind="webhook",receiver="http://127.0.0.1:' in metrics
    rc, out = hbctl(d, "stats")
    assert rc == 0, out
    [row] = [line.split() for line in out.splitlines() if line.startswith(rx.url)]
    # RECEIVER KIND SENT FAILED DROPPED SILENCED QUEUE LAST-SUCCESS LAST-ERROR
    assert row[1:3] == ["webhook", "0"] and int(row[3]) >= 3 and row[4:8] == ["1", "0", "0",
                                                                              "never"]
    assert "500" in " ".join(row[8:])


def test_a_webhook_that_does_not_answer_in_its_timeout_is_a_failed_try(daemon_factory,
                                                                       receiver):
    hang = receiver("hang")
    d = daemon_factory(webhooks=[{"url": hang.url + "/hook", "timeout": "0.5s",
                                  "max_retries": 1, "backoff_base": "0.1s"}]).start()
    agent = d.unix_agent("slow-1")
    agent.kill()
    agent.wait()

    def hook():
        return d.get("/stats")[2]["alerting"]["receivers"][0]
    wait_for(lambda: hook()["dropped"] == 1, 10, what="both tries timed out")
    assert hook()["failed"] == 2 and "timed out" in hook()["last_error"]
    first, second = [at for at, _ in hang.arrivals]
    assert second - first >= 0.5  # the first try waited out its timeout


def test_hung_receivers_slow_neither_heartbeats_nor_verdicts(daemon_factory, receiver):
    hang = receiver("hang")
    d = daemon_factory(alertmanager={"urls": [hang.url], "timeout": "30s"},
                       webhooks=[{"url": hang.url + "/hook", "timeout": "30s",
                                  "queue_size": 10}]).start()
    before = _timed_heartbeats(d, 1000)  # nothing sent yet: the receivers are idle
    for n in range(30):  # 30 crashes: more events than the webhook's queue holds
        agent = d.unix_agent(f"crash-{n}")
        agent.kill()
        agent.wait()
    for n in range(30):
        d.wait_state(f"crash-{n}", "dead")
    during = _timed_heartbeats(d, 1000)  # every sender now waits on its hung receiver
    assert len(before) == len(during) == 1000  # each one answered 200
    p99 = [sorted(times)[989] for times in (before, during)]
    print(f"heartbeat p99: {p99[0] * 1000:.2f} ms idle, {p99[1] * 1000:.2f} ms with the "
          "receivers hung")  # the bench compares them (bench_alerts.py); here: never waited
    assert p99[1] < p99[0] + 1.0  # a heartbeat held by a receiver would wait its 30 s
    status, _, health = d.get("/healthz")
    assert status == 200, health
    receivers = {r["kind"]: r for r in d.get("/stats")[2]["alerting"]["receivers"]}
    assert receivers["webhook"]["dropped"] >= 19  # 30 events, 10 queued, 1 in flight
    assert receivers["webhook"]["queue_depth"] == 10
    assert receivers["alertmanager"]["queue_depth"] >= 1


def test_without_alertmanager_a_silence_is_a_local_mute_that_webhooks_and_hooks_honour(
        daemon_factory, receiver, short_tmp):
    rx = receiver()
    marker = os.path.join(short_tmp, "hook-ran")
    d = daemon_factory(webhooks=[{"url": rx.url + "/hook"}],
                       hooks=[{"on": ["dead"], "command": ["/bin/sh", "-c", f"touch {marker}"]}]
                       ).start()
    code, out = hbctl(d, "silence", "job-1", "--for", "1h", "--reason", "restoring a backup")
    assert code == 0, out
    d.stop()
    d.start()  # the mute is kept across a restart
    code, out = hbctl(d, "silences")
    assert "agent_id=job-1" in out and "restoring a backup" in out
    agent = d.unix_agent("job-1")
    agent.kill()
    agent.wait()
    d.wait_state("job-1", "dead")
    time.sleep(1)
    assert rx.posts == [] and not os.path.exists(marker)
    assert d.agent("job-1")["silenced"]
    assert d.get("/stats")[2]["hook_silenced"] == 1
    silence_id = json.loads(hbctl(d, "silences", "--json")[1])["silences"][0]["id"]
    assert hbctl(d, "unsilence", silence_id)[0] == 0
    again = d.unix_agent("job-1")
    d.wait_state("job-1", "healthy")
    again.kill()
    again.wait()
    wait_for(lambda: os.path.exists(marker) and rx.docs("/hook"), 10,
             what="the hook and the webhook once unsilenced")


def test_silence_requests_are_checked(daemon_factory, short_tmp):
    token = os.path.join(short_tmp, "admin.token")
    scoped = os.path.join(short_tmp, "web.token")
    for path, value in ((token, "admin-token"), (scoped, "web-token")):
        with open(path, "w") as f:
            f.write(value)
    d = daemon_factory(http={"auth_token_file": token,
                             "tokens": [{"token_file": scoped, "agents": ["web-*"]}]}).start()
    admin = {"Authorization": "Bearer admin-token"}
    for body, needle in (({"match": "a", "for": "10m"}, "reason"),
                         ({"match": "a b", "for": "10m", "reason": "x"}, "glob"),
                         ({"match": "a", "for": "-1s", "reason": "x"}, "for"),
                         ({"match": "a", "for": "400d", "reason": "x"}, "366d"),
                         ({"match": ["a"], "for": "1m", "reason": "x"}, "strings"),
                         ("[" * 50000, "JSON object")):
        status, _, doc = d.request("POST", "/silences", body, admin)
        assert status == 400 and needle in doc["message"], (body, doc)
    ok = {"match": "web-*", "for": "1m", "reason": "x"}
    assert d.request("POST", "/silences", ok)[0] == 401
    status, _, doc = d.request("POST", "/silences", ok, {"Authorization": "Bearer web-token"})
    assert status == 403 and "auth_token_file" in doc["message"]
    for path in ("/silences/not-a-uuid", "/silences/00000000-0000-0000-0000-000000000000",
                 "/silences/../agents"):
        assert d.request("DELETE", path, None, admin)[0] == 404
    assert d.request("POST", "/silences", ok, admin)[0] == 200


def test_the_shipped_alertmanager_config_passes_amtool():
    amtool = require_tool("amtool", "prometheus-alertmanager")
    out = subprocess.run([amtool, "check-config", os.path.join(REPO, "docs", "alertmanager.yml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr
    assert "2 inhibit rules" in out.stdout


def test_a_reload_moves_the_webhooks_and_a_bad_secret_keeps_the_old_ones(daemon_factory,
                                                                        receiver, short_tmp):
    old, new = receiver(), receiver()
    d = daemon_factory(webhooks=[{"url": old.url + "/hook"}]).start()
    config = dict(d.config, webhooks=[{"url": new.url + "/hook",
                                       "secret_file": os.path.join(short_tmp, "missing")}])
    d.write_config(config)
    d.signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in d.log() and "webhooks[0].secret_file" in d.log(), 5,
             what="the reload refused")
    first = d.unix_agent("r-1")
    first.kill()
    first.wait()
    wait_for(lambda: old.docs("/hook"), 10, what="the old webhook still in use")
    d.write_config(dict(config, webhooks=[{"url": new.url + "/hook"}]))
    d.signal(signal.SIGHUP)
    wait_for(lambda: d.log().count("configuration reloaded") == 1, 5, what="the reload")
    second = d.unix_agent("r-2")
    second.kill()
    second.wait()
    wait_for(lambda: new.docs("/hook"), 10, what="the new webhook")
    assert [doc["event"]["agent_id"] for doc in old.docs("/hook")] == ["r-1"]
    assert [doc["event"]["agent_id"] for doc in new.docs("/hook")] == ["r-2"]


def test_an_ha_pair_of_daemons_is_one_alert_in_alertmanager(daemon_factory, receiver,
                                                           alertmanager):
    rx = receiver()
    am = alertmanager(rx.url)
    pair = [daemon_factory(name, **am_config(am), manager={"agent_id": "central"},
                           agent={"health_check": {"heartbeat_timeout": "1s"}}).start()
            for name in ("a", "b")]
    for d in pair:  # the same agent reports to both (as HTTP agents of a central pair do)
        assert d.post({"agent_id": "edge-1", "pid": os.getpid()})[0] == 200
    for d in pair:
        d.wait_state("edge-1", "no_heartbeat", timeout=5)
    wait_for(lambda: notifications(rx, "edge-1", "firing"), 10, what="the page")
    time.sleep(2)
    alerts = [a for a in am.alerts() if a["labels"]["agent_id"] == "edge-1"]
    assert len(alerts) == 1 and alerts[0]["labels"]["instance"] == "central"
    assert len(notifications(rx, "edge-1", "firing")) == 1


def test_a_webhook_event_waiting_at_a_kill_9_is_delivered_after_the_restart(daemon_factory,
                                                                            receiver):
    rx = receiver("fail")
    d = daemon_factory(webhooks=[{"url": rx.url + "/hook", "max_retries": 1000,
                                  "backoff_base": "0.1s", "backoff_max": "0.2s"}]).start()
    agent = d.unix_agent("pay-1")
    agent.kill()
    agent.wait()
    wait_for(lambda: len(rx.posts) >= 2, 10, what="the receiver refusing it")
    time.sleep(0.3)  # the store has written the event with its webhook body
    d.proc.kill()
    d.proc.wait()
    rx.mode = "ok"
    restarted = time.monotonic()
    d.start()
    wait_for(lambda: [p for p in rx.posts if p[0] > restarted], 10, what="the delivery")
    time.sleep(0.5)
    after = [doc for arrived, _, _, _, doc in rx.posts if arrived > restarted]
    assert [(doc["event"]["agent_id"], doc["alert"]) for doc in after] == [("pay-1", "firing")]
    [hook] = d.get("/stats")[2]["alerting"]["receivers"]
    assert hook["queue_depth"] == 0 and hook["sent"] == 1


def test_over_threshold_across_a_restart_is_no_recovery(daemon_factory, receiver):
    rx = receiver()
    d = daemon_factory(webhooks=[{"url": rx.url + "/hook"}], agent={"health_check": {
        "cpu_threshold": 10, "threshold_duration": "0.5s"}}).start()

    def beat():
        assert d.post({"agent_id": "hot-1", "pid": os.getpid(), "cpu": 90.0})[0] == 200

    for _ in range(4):
        beat()
        time.sleep(0.2)
    d.wait_state("hot-1", "over_threshold")
    wait_for(lambda: rx.docs("/hook"), 10, what="the over_threshold webhook")
    assert d.stop() == 0
    d.start()
    for _ in range(5):
        beat()
        time.sleep(0.1)
    assert d.state("hot-1") == "over_threshold"
    assert [doc["alert"] for doc in rx.docs("/hook")] == ["firing"]
    for _ in range(3):  # recovery_count (2) heartbeats under the limit: that is a recovery
        assert d.post({"agent_id": "hot-1", "pid": os.getpid(), "cpu": 1.0})[0] == 200
    d.wait_state("hot-1", "healthy")
    wait_for(lambda: len(rx.docs("/hook")) == 2, 10, what="the recovery")
    assert [doc["alert"] for doc in rx.docs("/hook")] == ["firing", "resolved"]


def test_no_agent_may_take_the_daemons_own_id(daemon_factory):
    d = daemon_factory(manager={"agent_id": "central-hbdaemon"}).start()
    status, _, doc = d.post({"agent_id": "central-hbdaemon", "pid": os.getpid(),
                             "summary": {"healthy": 3}})
    assert status == 403 and "own id" in doc["message"]
    sock = d.unix_send(json.dumps({"agent_id": "central-hbdaemon", "pid": os.getpid(),
                                   "summary": {"healthy": 3}}).encode() + b"\n", wait=0.3)
    sock.close()
    assert d.agent("central-hbdaemon") is None
    assert "reserved_id" in d.get("/metrics")[2]


def _timed_heartbeats(d, count: int) -> list:
    """Seconds each of `count` accepted HTTP heartbeats took (the refused are left out)."""
    times = []
    for n in range(count):
        started = time.perf_counter()
        status, _, _ = d.post({"agent_id": f"load-{n % 50}", "pid": os.getpid()})
        if status == 200:
            times.append(time.perf_counter() - started)
    return times

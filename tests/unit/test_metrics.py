"""The Prometheus page: one HELP/TYPE per family, escaped labels, parseable samples."""

import re

from hbdaemon.config import HealthCheckConfig
from hbdaemon.events import EventLog
from hbdaemon.health import PolicySet
from hbdaemon.metrics import render
from hbdaemon.protocol import Heartbeat
from hbdaemon.registry import Registry
from hbdaemon.stats import ReceiverStats

SAMPLE = re.compile(r'^[a-z_:][a-z0-9_:]*(\{([a-z_]+="([^"\\]|\\.)*",?)*\})? -?[0-9.e+-]+$')


def test_metrics_page_is_well_formed():
    events = EventLog(100)
    reg = Registry(PolicySet(HealthCheckConfig()), events.record)
    reg.apply(Heartbeat("a-1", 5, cpu=25.0, memory=2048), "http")
    stats = ReceiverStats()
    stats.note_received("http")
    stats.note_rejected("http", "invalid_cpu")
    extra = {"queue_depth": 0, "queue_capacity": 10, "unix_connections": 1, "http_connections": 0,
             "hook_runs": 0, "hook_failures": 0, "store_errors": 0, "max_agents": 50000,
             "connections_evicted": 0}
    text = render(reg, stats, events, lambda: extra)
    families = set()
    for line in text.splitlines():
        if line.startswith("# TYPE"):
            name = line.split()[2]
            assert name not in families
            families.add(name)
        elif not line.startswith("#"):
            assert SAMPLE.match(line), line
    assert 'hbdaemon_agent_state{agent_id="a-1",state="healthy"} 1' in text
    assert 'hbdaemon_agent_cpu_ratio{agent_id="a-1"} 0.25' in text
    assert 'hbdaemon_heartbeats_rejected_total{transport="http",reason="invalid_cpu"} 1' in text
    assert all(n.endswith("_total") for n in families if "counter" in text.split(f"# TYPE {n} ")[1][:8])

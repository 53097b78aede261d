"""Prometheus text exposition of what the daemon knows (format 0.0.4)."""

import time
from typing import Callable, Dict, Iterable, List

from hbdaemon import __version__
from hbdaemon.health import State


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _number(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


class MetricsWriter:
    """Collects families: one HELP and TYPE line each, then its samples."""

    def __init__(self):
        self.lines: List[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple]) -> None:
        """samples: (labels dict, value) pairs."""
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(registry, stats, events, extra: Callable[[], dict],
           wallclock: Callable[[], float] = time.time, max_agent_series: int = 10_000) -> str:
    """The whole /metrics page. Per-agent series for the first `max_agent_series` agents
    (in agent_id order); the counts per state always cover every agent."""
    now = wallclock()
    every = registry.metric_rows()
    rows = every[:max_agent_series]
    snap = stats.snapshot()
    more = extra()
    w = MetricsWriter()
    w.family("hbdaemon_build_info", "gauge", "Version of the running hbdaemon.",
             [({"version": __version__}, 1)])
    w.family("hbdaemon_start_time_seconds", "gauge", "When the daemon started (Unix time).",
             [({}, stats.started)])
    w.family("hbdaemon_agent_state", "gauge",
             "Agent health state: 1 for the state the agent is in, 0 for the others.",
             [({"agent_id": a, "state": s.value}, int(state == s.value))
              for a, state, *_ in rows for s in State])
    w.family("hbdaemon_agent_last_seen_age_seconds", "gauge",
             "Seconds since the agent's last heartbeat.",
             [({"agent_id": a}, max(0.0, now - seen)) for a, _, seen, *_ in rows if seen])
    w.family("hbdaemon_agent_cpu_ratio", "gauge",
             "Agent process CPU use as a fraction of the whole machine (0-1).",
             [({"agent_id": a}, cpu / 100.0) for a, _, _, cpu, *_ in rows])
    w.family("hbdaemon_agent_memory_bytes", "gauge", "Agent process resident memory.",
             [({"agent_id": a}, mem) for a, _, _, _, mem, *_ in rows])
    w.family("hbdaemon_agent_heartbeats_total", "counter",
             "Heartbeats accepted from the agent since the daemon started or the agent appeared.",
             [({"agent_id": a}, n) for a, _, _, _, _, n, _ in rows])
    w.family("hbdaemon_agent_flapping", "gauge",
             "1 if the agent changed state too often within the flap window.",
             [({"agent_id": a}, flap) for a, *_, flap in rows])
    counts = {s.value: 0 for s in State}
    for _, state, *_ in every:
        counts[state] += 1
    w.family("hbdaemon_agent_series_dropped", "gauge",
             "Agents without per-agent series (beyond metrics.max_agent_series); the counts "
             "per state include them.", [({}, len(every) - len(rows))])
    w.family("hbdaemon_agents", "gauge", "Known agents per state.",
             [({"state": s}, n) for s, n in counts.items()])
    w.family("hbdaemon_heartbeats_received_total", "counter",
             "Heartbeat messages received, valid or not.",
             [({"transport": t}, stats.received.get(t, 0)) for t in ("unix", "http", "udp")])
    w.family("hbdaemon_heartbeats_processed_total", "counter",
             "Heartbeats validated and applied to the registry.",
             [({"transport": t}, stats.processed.get(t, 0)) for t in ("unix", "http", "udp")])
    w.family("hbdaemon_heartbeats_rejected_total", "counter",
             "Heartbeat messages rejected, by transport and reason.",
             [({"transport": t, "reason": r}, n) for (t, r), n in sorted(stats.rejected.items())])
    w.family("hbdaemon_heartbeat_warnings_total", "counter",
             "Heartbeats applied without a field that was invalid (metric_invalid: cpu or "
             "memory, field_invalid: another optional field), by transport and reason.",
             [({"transport": t, "reason": r}, n) for (t, r), n in sorted(stats.warnings.items())])
    w.family("hbdaemon_http_refused_total", "counter",
             "API requests refused (bad token, foreign origin, non-loopback Host, ...), by reason.",
             [({"reason": r}, n) for r, n in sorted(stats.refused.items())])
    w.family("hbdaemon_agents_max", "gauge", "agent.max_agents: new ids beyond it are refused.",
             [({}, more["max_agents"])])
    w.family("hbdaemon_heartbeat_latency_seconds_average", "gauge",
             "Average time from receipt to registry update.", [({}, snap["average_latency"])])
    w.family("hbdaemon_queue_depth", "gauge", "HTTP heartbeats waiting for a worker.",
             [({}, more["queue_depth"])])
    w.family("hbdaemon_queue_capacity", "gauge", "Size of the HTTP heartbeat queue.",
             [({}, more["queue_capacity"])])
    w.family("hbdaemon_connections", "gauge", "Open connections per listener.",
             [({"listener": "unix"}, more["unix_connections"]),
              ({"listener": "http"}, more["http_connections"])])
    w.family("hbdaemon_connections_evicted_total", "counter",
             "HTTP connections closed at the connection cap to make room (the one waiting "
             "longest for its next request).", [({}, more["connections_evicted"])])
    w.family("hbdaemon_accept_failures_total", "counter",
             "Connections that could not be accepted for want of a file descriptor.",
             [({}, more.get("accept_failures", 0))])
    w.family("hbdaemon_events_total", "counter",
             "Events recorded, by the state entered (or the event kind).",
             [({"to": k}, n) for k, n in sorted(dict(events.counts).items())])
    w.family("hbdaemon_hook_runs_total", "counter", "Hook commands run.",
             [({}, more["hook_runs"])])
    w.family("hbdaemon_hook_failures_total", "counter", "Hook commands that failed or timed out.",
             [({}, more["hook_failures"])])
    w.family("hbdaemon_store_errors_total", "counter", "Failed writes to the state store.",
             [({}, more["store_errors"])])
    w.family("hbdaemon_store_dropped_events_total", "counter",
             "Events not written because the store kept failing (the newest max_events are "
             "kept for the retry).", [({}, more.get("store_dropped_events", 0))])
    alerting = more.get("alerting", {"firing": 0, "receivers": []})
    receivers = alerting["receivers"]
    w.family("hbdaemon_alerts_firing", "gauge",
             "Agents in no_heartbeat, dead or over_threshold: one firing alert each.",
             [({}, alerting["firing"])])
    for name, field, kind, help_text in (
            ("hbdaemon_alerts_sent_total", "sent", "counter",
             "Alerts (Alertmanager) or events (webhooks) delivered, per receiver."),
            ("hbdaemon_alerts_failed_total", "failed", "counter",
             "Deliveries that failed (each attempt), per receiver."),
            ("hbdaemon_alerts_dropped_total", "dropped", "counter",
             "Alerts or events given up on: queue full or retries spent, per receiver."),
            ("hbdaemon_alerts_silenced_total", "silenced", "counter",
             "Webhook events not sent because their agent was silenced."),
            ("hbdaemon_alerts_queue_depth", "queue_depth", "gauge",
             "Alerts or events waiting to be delivered, per receiver."),
            ("hbdaemon_alerts_last_success_timestamp_seconds", "last_success_seconds", "gauge",
             "When a delivery last succeeded (Unix time), per receiver.")):
        w.family(name, kind, help_text,
                 [({"kind": r["kind"], "receiver": r["receiver"]}, r[field])
                  for r in receivers if r[field] is not None])
    components = more.get("components", {})
    w.family("hbdaemon_component_restarts_total", "counter",
             "Times a part of the daemon (a long-lived thread) raised and was started again.",
             [({"component": name}, c["restarts"]) for name, c in sorted(components.items())])
    w.family("hbdaemon_component_up", "gauge",
             "1 while a part of the daemon runs and keeps up; 0 while it is down or stuck.",
             [({"component": name}, int(c["up"])) for name, c in sorted(components.items())])
    return w.text()

"""Alerts: which agents are failing now, pushed to Prometheus Alertmanager (API v2).

The AlertBook holds one alert per agent in `no_heartbeat`, `dead` or `over_threshold`:
rebuilt from the registry at start (an agent `unknown` after a restart keeps the alert
of the state it was in), then kept by the events. Each Alertmanager URL has its own
sender thread, so one that hangs delays none of the others and never the intake: the
event thread only queues. A firing alert is sent at once and again every
resend_interval (Alertmanager expires what it stops hearing about); a resolved one
(the agent healthy, stopped or forgotten) is sent with its endsAt until delivered.
"""

import collections
import itertools
import json
import logging
import threading
import time
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union
from urllib.parse import quote

from hbdaemon.config import FAILING_STATES, AlertmanagerConfig, redacted_url
from hbdaemon.events import Event
from hbdaemon.httpclient import SEND_ERRORS, request
from hbdaemon.protocol import format_rfc3339
from hbdaemon.threads import Component, alive, guard, halt

log = logging.getLogger(__name__)

ALERTNAME = {"no_heartbeat": "HeartbeatAgentDown", "dead": "HeartbeatAgentDown",
             "over_threshold": "HeartbeatAgentOverThreshold"}
SEVERITY = {"no_heartbeat": "critical", "dead": "critical", "over_threshold": "warning"}
SUMMARY = {"no_heartbeat": "{} sends no heartbeats",
           "dead": "{} is dead: its process is gone",
           "over_threshold": "{} is over its CPU or memory limit"}
BATCH = 1000             # alerts per POST
MAX_PENDING = 200_000    # alerts waiting per receiver; beyond, the oldest are dropped
RETRY_FIRST, RETRY_MAX = 0.5, 30.0
VALID_FOR = 4            # a firing alert's endsAt: this many resend_intervals ahead
_NUMBERS = itertools.count(1)  # of sender threads, never reused (a reload makes new ones)


class Alert:
    """One agent's alert: firing while `ended` is None."""

    __slots__ = ("agent_id", "state", "since", "reason", "daemon", "ended")

    def __init__(self, agent_id: str, state: str, since: float, reason: str,
                 daemon: Union[bool, str] = False, ended: Optional[float] = None):
        self.agent_id, self.state, self.since, self.reason = agent_id, state, since, reason
        # True: the agent is a host's hbdaemon reporting to this one; a str: the host's
        # hbdaemon that relays this agent's state (see Registry.daemon_role)
        self.daemon = daemon
        self.ended = ended

    @property
    def key(self) -> Tuple[str, str]:
        return self.agent_id, self.state

    def resolved(self, at: float) -> "Alert":
        return Alert(self.agent_id, self.state, self.since, self.reason, self.daemon, at)


class AlertChange:
    """What one event did to the alerts: an alert resolved, one fired (either may be None)."""

    __slots__ = ("resolved", "fired")

    def __init__(self, resolved: Optional[Alert] = None, fired: Optional[Alert] = None):
        self.resolved, self.fired = resolved, fired

    def __bool__(self) -> bool:
        return self.resolved is not None or self.fired is not None

    @property
    def alerts(self) -> List[Alert]:
        return [a for a in (self.resolved, self.fired) if a is not None]


class AlertBook:
    """The firing alerts, one per agent. Thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._firing: Dict[str, Alert] = {}

    def rebuild(self, rows: Iterable[Tuple[str, str, float, str, object]]) -> int:
        """(agent_id, state, since, reason, its daemon role) of the failing agents
        (Registry.alerting)."""
        with self._lock:
            self._firing = {row[0]: Alert(*row) for row in rows if row[1] in FAILING_STATES}
            return len(self._firing)

    def apply(self, ev: Event, daemon_role: Callable[[str], object] = lambda agent_id: False
              ) -> AlertChange:
        """What `ev` does to the alerts; daemon_role(agent_id) is asked when one fires."""
        with self._lock:
            current = self._firing.get(ev.agent_id)
            if ev.kind == "forgotten" or (ev.kind == "state"
                                          and ev.to_state in ("healthy", "stopped")):
                if current is None:
                    return AlertChange()
                del self._firing[ev.agent_id]
                return AlertChange(resolved=current.resolved(ev.time))
            if ev.kind != "state" or ev.to_state not in FAILING_STATES:
                return AlertChange()  # `unknown` (a restart) changes no alert
            if current is not None and current.state == ev.to_state:
                return AlertChange()  # the same alert goes on (e.g. after a restart)
            fired = Alert(ev.agent_id, ev.to_state, ev.time, ev.reason, daemon_role(ev.agent_id))
            self._firing[ev.agent_id] = fired
            return AlertChange(current.resolved(ev.time) if current else None, fired)

    def firing(self) -> List[Alert]:
        with self._lock:
            return list(self._firing.values())

    def get(self, agent_id: str) -> Optional[Alert]:
        with self._lock:
            return self._firing.get(agent_id)

    def __len__(self) -> int:
        return len(self._firing)


class Delivery:
    """Counters for one receiver (an Alertmanager URL or a webhook), for /stats and /metrics."""

    def __init__(self, kind: str, name: str):
        self.kind, self.name = kind, name
        self.sent = 0          # alerts (or webhook events) delivered
        self.failed = 0        # requests that failed
        self.dropped = 0       # alerts or events given up on (queue full, retries spent)
        self.silenced = 0      # events not sent because the agent is silenced
        self.last_success: Optional[float] = None  # wall time
        self.last_error = ""
        self.depth = 0         # waiting to be sent

    def take_over(self, old: "Delivery") -> None:
        self.sent, self.failed = self.sent + old.sent, self.failed + old.failed
        self.dropped, self.silenced = self.dropped + old.dropped, self.silenced + old.silenced
        self.last_success = self.last_success or old.last_success

    def report(self) -> dict:
        return {"kind": self.kind, "receiver": self.name, "sent": self.sent,
                "failed": self.failed, "dropped": self.dropped, "silenced": self.silenced,
                "queue_depth": self.depth, "last_error": self.last_error,
                "last_success": format_rfc3339(self.last_success) if self.last_success else None,
                "last_success_seconds": self.last_success}


def alert_labels(alert: Alert, instance: str, extra: Tuple[Tuple[str, str], ...]) -> Dict[str, str]:
    """The alert's identity in Alertmanager: two daemons watching the same agents (an HA
    pair) must give identical labels, so instance is manager.agent_id, not a hostname
    guessed per daemon, when the pair sets it alike. `hbdaemon` names the host's daemon
    the agent belongs to (the agent itself when it is a host's daemon, `role` hbdaemon;
    the host's daemon that relays it), so that one host's daemon down can inhibit its
    agents' alerts, here and where they are relayed."""
    labels = {"severity": SEVERITY[alert.state]}
    labels.update(extra)
    labels.update(alertname=ALERTNAME[alert.state], agent_id=alert.agent_id,
                  state=alert.state, instance=instance,
                  role="hbdaemon" if alert.daemon is True else "agent",
                  hbdaemon=alert.agent_id if alert.daemon is True else alert.daemon or instance)
    return labels


class AlertmanagerSender:
    """The alerts for one Alertmanager URL, on the thread hb-alertmanager-N."""

    def __init__(self, url: str, cfg: AlertmanagerConfig, book: AlertBook,
                 instance: str, page_url: str = "",
                 clock: Callable[[], float] = time.monotonic,
                 wallclock: Callable[[], float] = time.time):
        self.url = url.rstrip("/") + "/api/v2/alerts"
        self.name = f"hb-alertmanager-{next(_NUMBERS)}"  # unique: /stats lists parts by name
        self.cfg, self.book, self.instance, self.page_url = cfg, book, instance, page_url
        self._clock, self._wall = clock, wallclock
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pending: "collections.OrderedDict[tuple, Alert]" = collections.OrderedDict()
        self.delivery = Delivery("alertmanager", redacted_url(url))
        self.component: Optional[Component] = None

    def offer(self, alerts: Iterable[Alert]) -> None:
        """Queue alerts to send now (from the event thread: never blocks on the network)."""
        with self._lock:
            for alert in alerts:
                self._pending.pop(alert.key, None)
                self._pending[alert.key] = alert  # the newest word on an alert goes last
            while len(self._pending) > MAX_PENDING:
                self._pending.popitem(last=False)
                self.delivery.dropped += 1
            self.delivery.depth = len(self._pending)
        self._wake.set()

    def take_over(self, old: "AlertmanagerSender") -> None:
        """After a reload: what `old` had waiting, and its counts (counters never go back)."""
        with old._lock:
            waiting = list(old._pending.values())
        self.delivery.take_over(old.delivery)
        self.offer(waiting)

    def start(self) -> None:
        self.component = guard(self.name, self._loop,
                               stuck_after=self.cfg.resend_interval + 3 * self.cfg.timeout + 30)

    def stop(self, timeout: float) -> None:
        """Stop sending, after one last try at what waits (a resolved alert, say); firing
        alerts are left firing: a restart must not resolve them."""
        self._stop.set()
        self._wake.set()
        halt(self.component, timeout)
        if self.delivery.depth and not self._send_batch(timeout=min(timeout, self.cfg.timeout)):
            log.warning("alertmanager %s: %d alerts not sent at stop", self.url,
                        self.delivery.depth)

    def _loop(self) -> None:
        resend_at, retry = 0.0, RETRY_FIRST
        while not self._stop.is_set():
            alive()
            now = self._clock()
            if now >= resend_at:
                self._requeue_firing()
                resend_at = now + self.cfg.resend_interval
            if self._send_batch():
                retry = RETRY_FIRST
                wait = 0.0 if self.delivery.depth else resend_at - self._clock()
            else:
                wait, retry = min(retry, resend_at - self._clock()), min(2 * retry, RETRY_MAX)
            if wait > 0:
                self._wake.wait(min(wait, 5.0))  # also a pulse for the stuck check
                self._wake.clear()

    def _requeue_firing(self) -> None:
        """Every firing alert again (those with a newer word waiting keep it)."""
        with self._lock:
            for alert in self.book.firing():
                self._pending.setdefault(alert.key, alert)
            self.delivery.depth = len(self._pending)

    def _send_batch(self, timeout: Optional[float] = None) -> bool:
        """POST up to BATCH waiting alerts; False if that failed (they wait for a retry)."""
        with self._lock:
            batch = list(self._pending.values())[:BATCH]
        if not batch:
            return True
        body = json.dumps([self.document(a) for a in batch]).encode()
        try:
            status, answer = request("POST", self.url, body,
                                     {"Content-Type": "application/json"},
                                     timeout or self.cfg.timeout)
            if status // 100 != 2:
                raise OSError(f"answered {status}: {answer[:200].decode('utf-8', 'replace')}")
        except SEND_ERRORS as exc:
            if not self.delivery.last_error:
                log.warning("alertmanager %s: cannot send %d alerts: %s (retrying)", self.url,
                            len(batch), exc)
            self.delivery.failed += 1
            self.delivery.last_error = str(exc)[:300]
            return False
        if self.delivery.last_error:
            log.info("alertmanager %s: sending again", self.url)
        with self._lock:
            for alert in batch:  # unless a newer word on the same alert came meanwhile
                if self._pending.get(alert.key) is alert:
                    del self._pending[alert.key]
            self.delivery.depth = len(self._pending)
        self.delivery.sent += len(batch)
        self.delivery.last_success, self.delivery.last_error = self._wall(), ""
        return True

    def document(self, alert: Alert) -> dict:
        """One postableAlert of Alertmanager's API v2."""
        ends = alert.ended if alert.ended is not None else \
            self._wall() + VALID_FOR * self.cfg.resend_interval
        doc = {"labels": alert_labels(alert, self.instance, self.cfg.labels),
               "annotations": {"summary": SUMMARY[alert.state].format(alert.agent_id),
                               "reason": alert.reason},
               "startsAt": format_rfc3339(alert.since), "endsAt": format_rfc3339(ends)}
        if self.page_url:
            doc["generatorURL"] = f"{self.page_url}#agent={quote(alert.agent_id, safe='')}"
        return doc

"""Reporting upward: this daemon's own heartbeat, with a summary, to a central hbdaemon.

With manager.url set, the daemon POSTs to the upstream's /heartbeat every
heartbeat_interval, and every reconnect_interval while that fails; the summary
(agents per state) travels in the protocol's `summary` field, which the upstream keeps
and shows. On a clean stop it says `stopping`, so the upstream shows it stopped.

Each state change of this daemon's agents goes up too, within FORWARD_DELAY (at most a
report each CHANGES_GAP for changes), in the
report's `events` (at most MAX_QUEUED wait; the oldest beyond are dropped and counted;
kept and sent again until an upstream over HTTP took them), with `problems`, the agents
failing here now: the upstream keeps each as <this daemon's id>:<agent id>, shows it and
alerts on it, and a lost datagram is made good by the next report's whole list.
"""

import collections
import itertools
import json
import logging
import os
import socket
import ssl
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

from hbdaemon import __version__
from hbdaemon.config import ManagerConfig
from hbdaemon.httpclient import SEND_ERRORS, request
from hbdaemon.events import Event
from hbdaemon.protocol import MAX_REASON, MAX_RELAYED, format_rfc3339
from hbdaemon.keyfile import Key, sign
from hbdaemon.udp_server import MAX_DATAGRAM
from hbdaemon.threads import Component, alive, guard, halt

log = logging.getLogger(__name__)

STUCK_MARGIN = 30.0
FORWARD_DELAY = 0.05  # seconds: changes this close together go up in one report
MAX_DATAGRAMS = 40    # datagrams one report over UDP may take (its changes, a few each)
CHANGES_GAP = 1.0     # seconds at least between two reports made for changes (a flapping
                      # agent must not make a host report 20 times a second)
MAX_QUEUED = 1000     # changes waiting to go up; beyond, the oldest are dropped


def daemon_id(cfg: ManagerConfig) -> str:
    """This daemon's id upstream (and its alerts' `instance`): manager.agent_id, or
    <short hostname>-hbdaemon."""
    return cfg.agent_id or f"{socket.gethostname().split('.')[0]}-hbdaemon"[:128]


def heartbeat_url(url: str) -> str:
    """The upstream's POST /heartbeat: a bare base URL gets the path added."""
    if url.startswith("udp://"):
        return url
    return url.rstrip("/") + "/heartbeat" if urlsplit(url).path in ("", "/") else url


class UpstreamReporter:
    """The hb-upstream thread. start()/stop(timeout) from the main thread."""

    def __init__(self, cfg: ManagerConfig, summary: Callable[[], Dict[str, int]],
                 token: Optional[str] = None, key: Optional[Key] = None,
                 tls: Optional[ssl.SSLContext] = None,
                 problems: Callable[[int], Tuple[List[dict], int]] = lambda limit: ([], 0),
                 url: Optional[str] = None, name: str = "hb-upstream"):
        self.cfg = cfg
        self.url = heartbeat_url(url or cfg.url)
        self.name = name
        self.agent_id = daemon_id(cfg)
        self._summary = summary
        self._problems = problems  # (up to `limit` failing agents here, how many in all)
        self._changes: collections.deque = collections.deque()  # (number, event document)
        self._changes_lock = threading.Lock()
        self._numbers = 0
        self.changes_dropped = 0
        self._wake = threading.Event()
        self._stamp = 0.0  # the last datagram's timestamp (see _send_datagrams)
        self._token = token
        self.key = key  # with udp://: signs the datagrams (replaced on reload)
        self.tls = tls  # with https://: how the upstream is verified (manager.ca_file)
        self._udp: Optional[socket.socket] = None
        self._stop = threading.Event()
        self.component: Optional[Component] = None
        self._failing = False
        self._failures = 0
        self._cpu_mark = (time.monotonic(), time.process_time())

    def start(self) -> None:
        log.info("reporting to upstream %s as %s every %.0fs", self.url, self.agent_id,
                 self.cfg.heartbeat_interval)
        # stuck: no attempt for longer than a wait plus a timed-out attempt, and then some
        stuck = max(self.cfg.heartbeat_interval, self.cfg.reconnect_interval) \
            + 2 * self.cfg.timeout + STUCK_MARGIN
        self.component = guard(self.name, self._loop, stuck_after=stuck)

    def on_event(self, ev: Event) -> None:
        """An event listener (hb-events): a state change goes up with the next report,
        which is made at once."""
        if ev.kind not in ("state", "forgotten") or ev.to_state == "unknown":
            return  # unknown (this daemon restarted): not known to have recovered
        doc = {"agent_id": ev.agent_id, "from": ev.from_state,
               "to": "forgotten" if ev.kind == "forgotten" else ev.to_state,
               "reason": ev.reason[:MAX_REASON], "time": format_rfc3339(ev.time)}
        with self._changes_lock:
            if len(self._changes) >= MAX_QUEUED:
                self._changes.popleft()
                self.changes_dropped += 1
            self._numbers += 1
            self._changes.append((self._numbers, doc))
        self._wake.set()

    @property
    def changes_waiting(self) -> int:
        return len(self._changes)

    def stop(self, timeout: float) -> None:
        """Stop the loop, then say `stopping` upstream (bounded by manager.timeout)."""
        self._stop.set()
        self._wake.set()
        halt(self.component, timeout)
        try:
            self.send("stopping", timeout=min(timeout, self.cfg.timeout))
        except SEND_ERRORS as exc:
            log.debug("upstream: could not say stopping: %s", exc)

    def _loop(self) -> None:
        due = time.monotonic()  # the next report; sooner when a change waits (not failing)
        sent = float("-inf")  # when the last report went
        while True:
            self._wake.wait(max(0.0, due - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                return
            alive()
            if self._changes and not self._failing:
                # the changes that come with it, and no sooner than CHANGES_GAP after the last
                self._stop.wait(max(FORWARD_DELAY, sent + CHANGES_GAP - time.monotonic()))
            elif time.monotonic() < due:
                continue
            sent = time.monotonic()
            try:
                self.send("running")
            except SEND_ERRORS as exc:  # e.g. BadStatusLine from a server that is not HTTP
                self._failures += 1
                if not self._failing:
                    log.warning("upstream %s: lost: %s (retrying every %.0fs)", self.url, exc,
                                self.cfg.reconnect_interval)
                self._failing = True
                due = time.monotonic() + self.cfg.reconnect_interval
                continue
            if self._failing:
                log.info("upstream %s: reconnected after %d failed attempts", self.url,
                         self._failures)
            self._failing, self._failures = False, 0
            due = time.monotonic() + self.cfg.heartbeat_interval

    def send(self, status: str, timeout: Optional[float] = None) -> None:
        """POST one report; raises one of SEND_ERRORS on failure. The changes it carried
        are done with once it was taken (or sent, over UDP)."""
        with self._changes_lock:
            changes = list(itertools.islice(self._changes, MAX_RELAYED))
        problems, total = self._problems(MAX_RELAYED)
        doc = {"agent_id": self.agent_id, "pid": os.getpid(), "status": status,
               "timestamp": format_rfc3339(time.time()), "version": f"hbdaemon-{__version__}",
               "summary": self._summary(), "memory": _rss(), "cpu": self._cpu(),
               "events": [change for _, change in changes], "problems": problems,
               "problems_total": total}
        if self.url.startswith("udp://"):
            self._send_datagrams(doc, changes)
            return
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        status, body = request("POST", self.url, json.dumps(doc).encode(), headers,
                               timeout or self.cfg.timeout, tls=self.tls)
        if not 200 <= status < 300:
            raise OSError(f"upstream answered {status}: {body[:200]!r}")
        self._done(changes)

    def _done(self, changes: list) -> None:
        """Drop the changes that went up; say so at once if more wait."""
        if not changes:
            return
        last = changes[-1][0]
        with self._changes_lock:
            while self._changes and self._changes[0][0] <= last:
                self._changes.popleft()
            more = bool(self._changes)
        if more:
            self._wake.set()

    def _send_datagrams(self, doc: dict, changes: list) -> None:
        """A report over UDP: as many datagrams as its changes need (at most
        MAX_DATAGRAMS), the first with as many of the problems as fit beside them (a list
        cut short counts as partial upstream), the others with changes only."""
        for n in range(MAX_DATAGRAMS):
            # each its own timestamp, later than the last: the upstream drops a datagram
            # not newer than the last it took from us as a replay
            self._stamp = max(time.time(), self._stamp + 0.001)
            part = dict(doc, events=[change for _, change in changes],
                        timestamp=format_rfc3339(self._stamp))
            if n:
                del part["problems"], part["problems_total"]
            payload, taken = self._fit(part)
            if taken == 0 and changes and not part.get("problems"):
                log.warning("upstream %s: a change of %s does not fit in a datagram; "
                            "dropped", self.url, changes[0][1]["agent_id"])
                self.changes_dropped += 1
                taken = 1
            self._send_datagram(payload)
            self._done(changes[:taken])
            changes = changes[taken:]
            if not changes:
                return

    def _fit(self, doc: dict) -> Tuple[bytes, int]:
        """The report as a payload that fits a datagram once signed: fewer problems
        first, then fewer changes; the payload and how many changes it holds."""
        room = MAX_DATAGRAM - len(sign(self.key, b""))
        while True:
            payload = json.dumps(doc).encode()
            if len(payload) <= room:
                return payload, len(doc["events"])
            if doc.get("problems"):
                doc["problems"] = doc["problems"][:len(doc["problems"]) // 2]
            elif doc["events"]:
                doc["events"] = doc["events"][:len(doc["events"]) // 2]
            else:
                return payload, 0  # too large even bare: _send_datagram says so

    def _send_datagram(self, payload: bytes) -> None:
        """One signed datagram (no answer: a lost one is a missed report). OSError."""
        datagram = sign(self.key, payload)
        if len(datagram) > MAX_DATAGRAM:
            raise OSError(f"the report is {len(datagram)} bytes, more than a datagram")
        if self._udp is None:
            parts = urlsplit(self.url)
            family, _, _, _, self._address = socket.getaddrinfo(
                parts.hostname, parts.port, type=socket.SOCK_DGRAM)[0]
            self._udp = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self._udp.sendto(datagram, self._address)
        except OSError:
            self._udp.close()
            self._udp = None  # resolved again at the next report
            raise

    def _cpu(self) -> float:
        """This daemon's CPU since the last report, as a percent of the machine."""
        now, used = time.monotonic(), time.process_time()
        then, before = self._cpu_mark
        self._cpu_mark = (now, used)
        if now <= then:
            return 0.0
        return round(min(100.0, (used - before) / (now - then) * 100 / (os.cpu_count() or 1)), 2)


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0

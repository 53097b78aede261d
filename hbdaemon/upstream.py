"""Reporting upward: this daemon's own heartbeat, with a summary, to a central hbdaemon.

With manager.url set, the daemon POSTs to the upstream's /heartbeat every
heartbeat_interval, and every reconnect_interval while that fails; the summary
(agents per state) travels in the protocol's `summary` field, which the upstream keeps
and shows. On a clean stop it says `stopping`, so the upstream shows it stopped.
"""

import json
import logging
import os
import socket
import ssl
import threading
import time
from typing import Callable, Dict, Optional
from urllib.parse import urlsplit

from hbdaemon import __version__
from hbdaemon.config import ManagerConfig
from hbdaemon.httpclient import SEND_ERRORS, request
from hbdaemon.protocol import format_rfc3339
from hbdaemon.keyfile import Key, sign
from hbdaemon.udp_server import MAX_DATAGRAM
from hbdaemon.threads import Component, alive, guard, halt

log = logging.getLogger(__name__)

STUCK_MARGIN = 30.0


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
                 tls: Optional[ssl.SSLContext] = None):
        self.cfg = cfg
        self.url = heartbeat_url(cfg.url)
        self.agent_id = daemon_id(cfg)
        self._summary = summary
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
        self.component = guard("hb-upstream", self._loop, stuck_after=stuck)

    def stop(self, timeout: float) -> None:
        """Stop the loop, then say `stopping` upstream (bounded by manager.timeout)."""
        self._stop.set()
        halt(self.component, timeout)
        try:
            self.send("stopping", timeout=min(timeout, self.cfg.timeout))
        except SEND_ERRORS as exc:
            log.debug("upstream: could not say stopping: %s", exc)

    def _loop(self) -> None:
        delay = 0.0
        while not self._stop.wait(delay):
            alive()
            try:
                self.send("running")
            except SEND_ERRORS as exc:  # e.g. BadStatusLine from a server that is not HTTP
                self._failures += 1
                if not self._failing:
                    log.warning("upstream %s: lost: %s (retrying every %.0fs)", self.url, exc,
                                self.cfg.reconnect_interval)
                self._failing = True
                delay = self.cfg.reconnect_interval
                continue
            if self._failing:
                log.info("upstream %s: reconnected after %d failed attempts", self.url,
                         self._failures)
            self._failing, self._failures = False, 0
            delay = self.cfg.heartbeat_interval

    def send(self, status: str, timeout: Optional[float] = None) -> None:
        """POST one heartbeat; raises one of SEND_ERRORS on failure."""
        doc = {"agent_id": self.agent_id, "pid": os.getpid(), "status": status,
               "timestamp": format_rfc3339(time.time()), "version": f"hbdaemon-{__version__}",
               "summary": self._summary(), "memory": _rss(), "cpu": self._cpu()}
        if self.url.startswith("udp://"):
            self._send_datagram(json.dumps(doc).encode())
            return
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        status, body = request("POST", self.url, json.dumps(doc).encode(), headers,
                               timeout or self.cfg.timeout, tls=self.tls)
        if not 200 <= status < 300:
            raise OSError(f"upstream answered {status}: {body[:200]!r}")

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

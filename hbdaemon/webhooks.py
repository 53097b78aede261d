"""Webhooks: a JSON POST per event to a URL, off the intake path.

Each webhook has its own thread (hb-webhook-N) and a bounded queue: when the receiver
falls behind, the oldest events are dropped and counted. A failed POST is retried after
backoff_base, doubling up to backoff_max, max_retries times; then the event is dropped
(and counted), and the next one goes. With secret_file, the body is signed:
`X-Hbdaemon-Signature: sha256=<hex HMAC-SHA256 of the body with the secret>`.
"""

import collections
import hashlib
import hmac
import itertools
import json
import logging
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from hbdaemon import __version__
from hbdaemon.alerts import Delivery
from hbdaemon.config import WebhookConfig
from hbdaemon.httpclient import SEND_ERRORS, request
from hbdaemon.threads import Component, alive, guard, halt

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Hbdaemon-Signature"
_NUMBERS = itertools.count(1)  # of sender threads, never reused (a reload makes new ones)


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def payload(event: dict, record: Optional[dict], alert: Optional[str], instance: str) -> bytes:
    """The document a webhook receives (README: "Webhooks")."""
    return json.dumps({"version": 1, "instance": instance, "alert": alert, "event": event,
                       "agent": record}, separators=(",", ":")).encode()


class WebhookSender:
    """One webhook: its queue, its thread, its counters."""

    def __init__(self, cfg: WebhookConfig, secret: Optional[bytes],
                 clock: Callable[[], float] = time.monotonic,
                 wallclock: Callable[[], float] = time.time):
        self.cfg, self.secret = cfg, secret
        self.name = f"hb-webhook-{next(_NUMBERS)}"  # unique: /stats lists parts by name
        self._clock, self._wall = clock, wallclock
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._queue: collections.deque = collections.deque()  # (seq, body), oldest first
        self._seq = 0
        self._dirty: Dict[int, Optional[bytes]] = {}  # seq -> body to keep, None: to delete
        self._drain_until = 0.0
        self.delivery = Delivery("webhook", cfg.label)
        self.component: Optional[Component] = None
        self.key = self.base_key

    @property
    def base_key(self) -> str:
        """Its queue's name in the state store (`key`, unless another has the same)."""
        return json.dumps([self.cfg.url, self.cfg.name])

    def offer(self, body: bytes) -> None:
        """Queue one event's payload (from the event thread: never blocks on the network)."""
        with self._lock:
            self._append(body)
        self._wake.set()

    def _append(self, body: bytes) -> None:
        if len(self._queue) >= self.cfg.queue_size:
            self._dirty[self._queue.popleft()[0]] = None
            self.delivery.dropped += 1
            if self.delivery.dropped == 1 or self.delivery.dropped % 1000 == 0:
                log.warning("webhook %s: queue full (%d): dropped the oldest event "
                            "(%d so far)", self.cfg.label, self.cfg.queue_size,
                            self.delivery.dropped)
        self._seq += 1
        self._queue.append((self._seq, body))
        self._dirty[self._seq] = body
        self.delivery.depth = len(self._queue)

    def restore(self, rows: List[Tuple[int, bytes]]) -> None:
        """What waited in the state store before a restart (before start())."""
        with self._lock:
            for seq, body in sorted(rows):
                if len(self._queue) >= self.cfg.queue_size:
                    self._dirty[self._queue.popleft()[0]] = None
                self._queue.append((seq, body))
                self._seq = max(self._seq, seq)
            self.delivery.depth = len(self._queue)

    def take_dirty(self) -> Dict[int, Optional[bytes]]:
        with self._lock:
            dirty, self._dirty = self._dirty, {}
        return dirty

    def take_over(self, old: "WebhookSender") -> None:
        """After a reload: what `old` had queued (moved to this one's queue in the store),
        and its counts (counters never go back)."""
        with old._lock:
            waiting = [body for _, body in old._queue]
        self.delivery.take_over(old.delivery)
        with self._lock:
            # numbered after the old queue's: a row it deletes must never be one added here
            self._seq = max(self._seq, old._seq)
            for body in waiting:
                self._append(body)
        self._wake.set()

    def retire(self) -> Dict[int, Optional[bytes]]:
        """Once stopped and replaced: its rows in the store, all to delete."""
        with self._lock:
            dirty, self._dirty = self._dirty, {}
            dirty.update((seq, None) for seq, _ in self._queue)
        return dirty

    def start(self) -> None:
        worst = (self.cfg.max_retries + 1) * self.cfg.timeout + self.cfg.backoff_max
        self.component = guard(self.name, self._loop, stuck_after=worst + 30)

    def stop(self, timeout: float) -> None:
        """Deliver what is queued for up to `timeout` (one attempt each), then stop."""
        self._drain_until = self._clock() + timeout
        self._stop.set()
        self._wake.set()
        halt(self.component, timeout + 0.5)
        if self._queue:
            log.warning("webhook %s: %d events not delivered at stop: kept in the state "
                        "store for the next start", self.cfg.label, len(self._queue))

    def _loop(self) -> None:
        while True:
            alive()
            with self._lock:
                head = self._queue[0] if self._queue else None
            if self._stop.is_set() and (head is None or self._clock() >= self._drain_until):
                return
            if head is None:
                self._wake.wait(5.0)
                self._wake.clear()
                continue
            self._deliver(head[1])
            with self._lock:
                if self._queue and self._queue[0] is head:
                    self._queue.popleft()
                    self._dirty[head[0]] = None
                self.delivery.depth = len(self._queue)

    def _deliver(self, body: bytes) -> None:
        """POST until it is taken or the retries are spent (stopping cuts the retries short)."""
        headers = {"Content-Type": "application/json", "User-Agent": f"hbdaemon/{__version__}"}
        if self.secret is not None:
            headers[SIGNATURE_HEADER] = signature(self.secret, body)
        delay = self.cfg.backoff_base
        for attempt in range(self.cfg.max_retries + 1):
            try:
                timeout = self.cfg.timeout
                if self._stop.is_set():  # draining at stop: within what is left of it
                    timeout = max(0.1, min(timeout, self._drain_until - self._clock()))
                status, answer = request("POST", self.cfg.url, body, headers, timeout)
                if status // 100 == 2:
                    self.delivery.sent += 1
                    self.delivery.last_success, self.delivery.last_error = self._wall(), ""
                    return
                error = f"answered {status}: {answer[:200].decode('utf-8', 'replace')}"
            except SEND_ERRORS as exc:
                error = str(exc) or type(exc).__name__
            self.delivery.failed += 1
            self.delivery.last_error = error[:300]
            if attempt == self.cfg.max_retries or self._stop.is_set():
                break
            log.warning("webhook %s: %s (retry %d of %d in %.1fs)", self.cfg.label, error,
                        attempt + 1, self.cfg.max_retries, delay)
            alive()
            if self._stop.wait(delay):
                break
            delay = min(2 * delay, self.cfg.backoff_max)
        self.delivery.dropped += 1
        log.error("webhook %s: gave up on an event after %d attempts: %s", self.cfg.label,
                  attempt + 1, self.delivery.last_error)

"""Receiver statistics: what came in, what was processed, what was rejected and why."""

import collections
import logging
import threading
import time
from typing import Callable, Dict, Optional, Tuple

from hbdaemon.protocol import format_rfc3339

log = logging.getLogger(__name__)

GO_ZERO_TIME = "0001-01-01T00:00:00Z"  # how Go writes an unset time.Time
LOG_INTERVAL = 10.0  # seconds between two log lines about the same kind of refusal


class ReceiverStats:
    """Counters shared by both receivers and the workers. Thread-safe."""

    def __init__(self, wallclock: Callable[[], float] = time.time,
                 clock: Callable[[], float] = time.monotonic):
        self._lock = threading.Lock()
        self._wall = wallclock
        self._clock = clock
        self.started = wallclock()
        self.received = collections.Counter()   # by transport
        self.processed = collections.Counter()  # by transport
        self.rejected = collections.Counter()   # by (transport, reason)
        self.warnings = collections.Counter()   # fields dropped or clamped, by (transport, reason)
        self.refused = collections.Counter()    # API requests refused, by reason
        self.latency_total = 0.0
        self.last_received: Optional[float] = None
        self._logged: Dict[str, Tuple[float, int]] = {}  # reason -> (last logged, unlogged since)

    def note_received(self, transport: str) -> None:
        with self._lock:
            self.received[transport] += 1
            self.last_received = self._wall()

    def note_processed(self, transport: str, latency: float) -> None:
        with self._lock:
            self.processed[transport] += 1
            self.latency_total += latency

    def note_rejected(self, transport: str, reason: str, message: str = "") -> None:
        """Count a rejected heartbeat; `message`, if given, is logged (see warn)."""
        with self._lock:
            self.rejected[(transport, reason)] += 1
        if message:
            self.warn(reason, message)

    def note_warning(self, transport: str, reason: str) -> None:
        """Count a heartbeat applied without one of its fields (liveness beats metrics)."""
        with self._lock:
            self.warnings[(transport, reason)] += 1

    def note_refused(self, reason: str, message: str = "") -> None:
        """Count an API request refused (bad token, foreign origin, ...); `message`, if
        given, is logged (see warn)."""
        with self._lock:
            self.refused[reason] += 1
        if message:
            self.warn(reason, message)

    def warn(self, reason: str, message: str, *args) -> bool:
        """Log a refusal (`message % args`, formatted only if logged) at WARNING, at most
        once per LOG_INTERVAL per reason, so that a flood of bad requests cannot flood the
        log; the next line says how many were not. True if this one was logged."""
        now = self._clock()
        with self._lock:
            last, unlogged = self._logged.get(reason, (None, 0))
            if last is not None and now - last < LOG_INTERVAL:
                self._logged[reason] = (last, unlogged + 1)
                return False
            self._logged[reason] = (now, 0)
        more = f" (and {unlogged} more like it in the last {now - last:.0f}s)" if unlogged else ""
        log.warning("%s%s", message % args if args else message, more)
        return True

    def _totals(self, received_time: Callable[[Optional[float]], object],
                latency: Callable[[float], object]) -> dict:
        """Under the lock: the Go receiver's five fields, its time and latency as given."""
        processed = sum(self.processed.values())
        return {
            "total_received": sum(self.received.values()),
            "total_processed": processed,
            "total_errors": sum(self.rejected.values()),
            "last_received_time": received_time(self.last_received),
            "average_latency": latency(self.latency_total / processed if processed else 0.0),
        }

    def snapshot(self) -> dict:
        """The /stats document (the Go original's fields first; latency in seconds)."""
        with self._lock:
            return {
                **self._totals(format_rfc3339, float),
                "received_by_transport": dict(self.received),
                "processed_by_transport": dict(self.processed),
                "errors_by_reason": _by_reason(self.rejected),
                "warnings_by_reason": _by_reason(self.warnings),
                "refused_by_reason": dict(self.refused),
                "started": format_rfc3339(self.started),
                "uptime": round(self._wall() - self.started, 3),
            }

    def go_snapshot(self) -> dict:
        """/heartbeat/stats: the Go receiver's stats struct as Go encodes it, for its
        clients: counts, `last_received_time` RFC 3339 (Go's zero time before the first
        heartbeat) and `average_latency` in integer nanoseconds (a time.Duration)."""
        with self._lock:
            return self._totals(lambda when: format_rfc3339(when) or GO_ZERO_TIME,
                                lambda seconds: round(seconds * 1e9))


def _by_reason(counter: collections.Counter) -> dict:
    """Sum a (transport, reason) counter over transports."""
    out: Dict[str, int] = collections.Counter()
    for (_, reason), n in counter.items():
        out[reason] += n
    return dict(out)

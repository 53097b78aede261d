"""Receiver statistics: what came in, what was processed, what was rejected and why."""

import collections
import threading
import time
from typing import Callable, Optional

from hbdaemon.protocol import format_rfc3339


class ReceiverStats:
    """Counters shared by both receivers and the workers. Thread-safe."""

    def __init__(self, wallclock: Callable[[], float] = time.time):
        self._lock = threading.Lock()
        self._wall = wallclock
        self.started = wallclock()
        self.received = collections.Counter()   # by transport
        self.processed = collections.Counter()  # by transport
        self.rejected = collections.Counter()   # by (transport, reason)
        self.latency_total = 0.0
        self.last_received: Optional[float] = None

    def note_received(self, transport: str) -> None:
        with self._lock:
            self.received[transport] += 1
            self.last_received = self._wall()

    def note_processed(self, transport: str, latency: float) -> None:
        with self._lock:
            self.processed[transport] += 1
            self.latency_total += latency

    def note_rejected(self, transport: str, reason: str) -> None:
        with self._lock:
            self.rejected[(transport, reason)] += 1

    def snapshot(self) -> dict:
        """The /stats document (the Go original's fields first)."""
        with self._lock:
            processed = sum(self.processed.values())
            rejects = collections.Counter()
            for (_, reason), n in self.rejected.items():
                rejects[reason] += n
            return {
                "total_received": sum(self.received.values()),
                "total_processed": processed,
                "total_errors": sum(self.rejected.values()),
                "last_received_time": format_rfc3339(self.last_received),
                "average_latency": self.latency_total / processed if processed else 0.0,
                "received_by_transport": dict(self.received),
                "processed_by_transport": dict(self.processed),
                "errors_by_reason": dict(rejects),
                "started": format_rfc3339(self.started),
                "uptime": round(self._wall() - self.started, 3),
            }

"""The worker pool behind HTTP intake: a bounded queue drained by N threads."""

import logging
import queue
import threading
import time
from typing import Callable, List

from hbdaemon.threads import Component, guard

log = logging.getLogger(__name__)

_STOP = object()


class PoolClosed(Exception):
    """The pool no longer takes work (the daemon is shutting down)."""


class WorkerPool:
    """Runs `handle(item)` for submitted items on `workers` threads named hb-worker-N.

    submit() is thread-safe and never blocks: a full queue raises queue.Full.
    """

    def __init__(self, handle: Callable[[object], None], workers: int, queue_size: int):
        self._handle = handle
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.components: List[Component] = []
        self._size = workers
        self._closed = False
        self._closing = threading.Lock()
        self.capacity = queue_size

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def crowded(self) -> bool:
        """At least half full: the HTTP receiver keeps the rest for agents it knows."""
        return self._queue.qsize() * 2 >= self.capacity

    def start(self) -> None:
        self.components = [guard(f"hb-worker-{n + 1}", self._work) for n in range(self._size)]

    def submit(self, item) -> None:
        """Queue one item; raises PoolClosed while stopping and queue.Full when full. An item
        taken is ahead of the stop markers, so stop() applies it (a 200 means applied)."""
        with self._closing:
            if self._closed:
                raise PoolClosed()
            self._queue.put_nowait(item)

    def stop(self, timeout: float) -> None:
        """Refuse new work, let the workers drain the queue, then stop them (bounded)."""
        with self._closing:  # no submit() between the check and its put, from here on
            self._closed = True
        deadline = time.monotonic() + timeout
        for c in self.components:
            c.stop()
        for _ in self.components:
            try:
                self._queue.put(_STOP, timeout=max(0.0, deadline - time.monotonic()))
            except queue.Full:
                break
        for c in self.components:
            c.thread.join(max(0.0, deadline - time.monotonic()))
        alive = [c.name for c in self.components if c.thread.is_alive()]
        if alive:
            log.warning("workers still busy after %.1fs, %d heartbeats dropped: %s",
                        timeout, self._queue.qsize(), ", ".join(alive))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            self._handle(item)  # raises: the guard logs it, counts it, starts the worker again

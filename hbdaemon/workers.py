"""The worker pool behind HTTP intake: a bounded queue drained by N threads."""

import logging
import queue
import threading
import time
from typing import Callable, List

from hbdaemon.threads import Component, guard

log = logging.getLogger(__name__)

_STOP = object()
NEW_SHARE = 4  # heartbeats of new agents may fill 1/NEW_SHARE of the queue, known ones the rest


class PoolClosed(Exception):
    """The pool no longer takes work (the daemon is shutting down)."""


class WorkerPool:
    """Runs `handle(item)` for submitted items on `workers` threads named hb-worker-N.

    The queue's `queue_size` places are shared: heartbeats of new agents may take a
    quarter, those of known agents the rest. A flood of new ids then never crowds out the
    agents already known, and known agents sending as fast as they can never keep a new
    one out for good. submit() is thread-safe; when its share is full it waits up to
    `wait` seconds for a place, then raises queue.Full.
    """

    def __init__(self, handle: Callable[[object], None], workers: int, queue_size: int,
                 inline: bool = False):
        self._handle = handle
        self.capacity = queue_size
        new = max(1, queue_size // NEW_SHARE)
        self._limit = {True: new, False: max(1, queue_size - new)}  # by "is it new?"
        self._queued = {True: 0, False: 0}
        self._lock = threading.Lock()
        self._space = {new: threading.Condition(self._lock) for new in (True, False)}
        self._waiting = {True: 0, False: 0}  # workers notify only when someone waits
        # unbounded itself (the shares bound it): the stop markers always fit behind
        self._queue: queue.Queue = queue.Queue()
        self.components: List[Component] = []
        self._size = workers
        self._closed = False
        self.inline = inline  # see submit
        self.inline_failures = 0

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self.components = [guard(f"hb-worker-{n + 1}", self._work) for n in range(self._size)]

    def wait_room(self, new: bool, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a place in the share of new (or known) agents;
        True if there is one now. New agents wait here, before they take a place in the
        gate, and then submit without waiting."""
        with self._lock:
            return self._wait(new, time.monotonic() + timeout)

    def submit(self, item, wait: float = 0.0, new: bool = False) -> None:
        """Queue one item, waiting up to `wait` seconds for a place in its share; raises
        PoolClosed while stopping and queue.Full when the share stays full. An item taken
        is ahead of the stop markers, so stop() applies it (a 200 means applied).

        With `inline`, a known agent's item while nothing is queued is handled at once on
        the caller's thread: two thread hand-offs a heartbeat were a quarter of keep-alive
        intake."""
        if self.inline and not new and not self._closed and not self._queue.qsize():
            try:
                self._handle(item)
            except Exception:  # a bug must not cost the caller its connection
                self.inline_failures += 1
                log.exception("an HTTP heartbeat could not be applied")
            return
        with self._lock:
            if not self._wait(new, time.monotonic() + wait):
                if self._closed:
                    raise PoolClosed()
                raise queue.Full
            if self._closed:
                raise PoolClosed()
            self._queued[new] += 1
            self._queue.put_nowait((new, item))

    def _wait(self, new: bool, deadline: float) -> bool:
        """Under the lock: wait until the share has a place (or stop, or `deadline`)."""
        while self._queued[new] >= self._limit[new] and not self._closed:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._waiting[new] += 1
            try:
                self._space[new].wait(left)
            finally:
                self._waiting[new] -= 1
        return True

    def stop(self, timeout: float) -> None:
        """Refuse new work, let the workers drain the queue, then stop them (bounded)."""
        with self._lock:  # no submit() between the check and its put, from here on
            self._closed = True
            for space in self._space.values():
                space.notify_all()
        deadline = time.monotonic() + timeout
        for c in self.components:
            c.stop()
        for _ in self.components:
            self._queue.put(_STOP)
        for c in self.components:
            c.thread.join(max(0.0, deadline - time.monotonic()))
        alive = [c.name for c in self.components if c.thread.is_alive()]
        if alive:
            log.warning("workers still busy after %.1fs, %d heartbeats dropped: %s",
                        timeout, self._queue.qsize(), ", ".join(alive))

    def _work(self) -> None:
        while True:
            entry = self._queue.get()
            if entry is _STOP:
                return
            new, item = entry
            with self._lock:
                self._queued[new] -= 1
                if self._waiting[new]:
                    self._space[new].notify()
            self._handle(item)  # raises: the guard logs it, counts it, starts the worker again

"""The heartbeat clock: a timer re-armed from a monotonic deadline, on one long-lived
thread (Ticker) rather than a threading.Timer per beat, whose thread's creation and
teardown were most of agentd's CPU for a beat."""

import logging
import threading
import time
from typing import Callable, Optional

log = logging.getLogger(__name__)


class _Timer:
    """threading.Timer's interface (start, cancel, daemon, name) for a Ticker."""

    def __init__(self, ticker: "Ticker", delay: float, fn: Callable[[], None]):
        self._ticker, self.delay, self.fn = ticker, delay, fn
        self.at = 0.0
        self.cancelled = False  # also once it has run: cancelling then has nothing to do
        self.daemon, self.name = True, ""

    def start(self) -> None:
        self.at = time.monotonic() + self.delay
        self._ticker.add(self)

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._ticker.add(None)  # a wake-up: it is dropped when its time comes round


class Ticker:
    """One daemon thread that runs timers at their times, one after another; use `timer`
    where threading.Timer would be (Scheduler's timer_factory).

    It sleeps on a plain lock held locked, which add() releases to wake it: one futex
    wait a beat, where a Condition allocates a lock and runs Python code for each wait."""

    def __init__(self, name: str = "agentd-beat"):
        self._name = name
        self._lock = threading.Lock()  # guards _timers and _thread
        self._wake = threading.Lock()
        self._wake.acquire()
        self._timers: list = []
        self._thread: Optional[threading.Thread] = None

    def timer(self, delay: float, fn: Callable[[], None]) -> _Timer:
        return _Timer(self, delay, fn)

    def add(self, timer: Optional[_Timer]) -> None:
        with self._lock:
            if timer is not None:
                self._timers.append(timer)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            if self._thread.ident == threading.get_ident():
                return  # added by a timer's own run: the loop looks again when it returns
        try:
            self._wake.release()
        except RuntimeError:
            pass  # a wake-up is already pending

    def _run(self) -> None:
        while True:
            with self._lock:
                self._timers = [t for t in self._timers if not t.cancelled]
                first = min(self._timers, key=lambda t: t.at) if self._timers else None
                wait = None if first is None else first.at - time.monotonic()
                if wait is not None and not wait > 0:  # NaN too: run it once, not for ever
                    self._timers.remove(first)
                    first.cancelled = True  # it has run: a cancel() needs no wake-up
            if wait is None:
                self._wake.acquire()
                continue
            if wait > 0:
                self._wake.acquire(timeout=wait)
                continue
            try:
                first.fn()
            except BaseException:  # one timer's failure must not end the others' thread
                log.exception("timer %r failed", first.fn)


def next_due(due: float, interval: float, now: float) -> float:
    """The slot after `due`; slots already past are skipped, never run late in a bunch."""
    due += interval
    if due <= now:
        due += (int((now - due) // interval) + 1) * interval
    return due


class Scheduler:
    """Calls tick(due) at every interval slot, and sooner when tick asks to be retried.

    tick(True) runs at a heartbeat slot, tick(False) at a retry the previous tick asked
    for by returning a delay in seconds. Slots are computed from a monotonic deadline
    (next_due += interval), so the beat never drifts. Thread-safe.
    """

    def __init__(self, interval: float, tick: Callable[[bool], Optional[float]],
                 clock: Callable[[], float] = time.monotonic, timer_factory=None):
        self.interval = interval
        self._tick = tick
        self.clock = clock
        self._timer_factory = timer_factory or Ticker().timer
        self._lock = threading.Lock()
        self._timer = None
        self._due = 0.0
        self._stopped = False
        self._generation = 0  # of the armed timer: an older one that still fires does nothing
        self._running = False  # a tick is under way: soon() leaves the re-arming to it
        self._soon: Optional[float] = None

    def start(self) -> None:
        """First tick at once."""
        with self._lock:
            self._stopped = False
            self._due = self.clock()
            self._arm(0.0)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            if self._timer is not None:
                self._timer.cancel()

    def soon(self, delay: float) -> None:
        """Run tick(False) within `delay` seconds, ahead of the next slot (the connection was
        lost: reconnect now, not at the next beat)."""
        with self._lock:
            if self._stopped:
                return
            if self._running:
                self._soon = delay if self._soon is None else min(self._soon, delay)
                return
            self._arm(delay)

    def set_interval(self, interval: float) -> None:
        """A new interval, counted from the next slot (SIGHUP)."""
        with self._lock:
            self.interval = interval

    def _arm(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._generation += 1
        generation = self._generation
        self._timer = self._timer_factory(delay, lambda: self._fire(generation))
        self._timer.daemon = True
        self._timer.name = "agentd-beat"
        self._timer.start()

    def _fire(self, generation: int) -> None:
        with self._lock:
            if self._stopped or generation != self._generation:
                return  # stopped, or replaced by soon()
            self._running = True
            due = self.clock() >= self._due - 0.001
        try:
            retry = self._tick(due)
        except BaseException:  # the beat must go on (SystemExit here ends only this thread)
            log.exception("heartbeat tick failed")
            retry = None
        with self._lock:
            self._running = False
            if self._stopped:
                return
            now = self.clock()
            if due:
                self._due = next_due(self._due, self.interval, now)
            delay = self._due - now
            if retry is not None:
                delay = min(delay, retry)
            if self._soon is not None:
                delay, self._soon = min(delay, self._soon), None
            self._arm(max(0.0, delay))

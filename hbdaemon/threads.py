"""Named daemon threads, a bounded join, and guarded components: how every part of the
daemon runs its background work without dying silently."""

import logging
import threading
import time
from typing import Callable, List, Optional

log = logging.getLogger(__name__)

RESTART_FIRST = 0.5    # seconds before the first restart of a component that raised
RESTART_MAX = 30.0     # backoff doubles up to this
RESTART_RESET = 60.0   # a run this long resets the backoff

_current = threading.local()  # .component: the Component whose loop runs on this thread


def spawn(name: str, target, *args) -> threading.Thread:
    """Start `target(*args)` in a daemon thread called `name` (a stuck one never blocks exit)."""
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    thread.start()
    return thread


def join(thread: Optional[threading.Thread], timeout: float) -> bool:
    """Wait up to `timeout` for `thread` to end; warn and return False if it did not."""
    if thread is None:
        return True
    thread.join(timeout)
    if thread.is_alive():
        log.warning("thread %s did not stop within %.1fs", thread.name, timeout)
        return False
    return True


class Component:
    """A long-lived loop on its own thread, guarded: if the loop raises, the exception is
    logged with its traceback, counted, and the loop started again after a backoff. A loop
    that calls threads.alive() each time round is reported stuck when it stops doing so for
    `stuck_after` seconds. The loop returns only when its owner asks it to stop."""

    def __init__(self, name: str, loop: Callable, *args, stuck_after: Optional[float] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.name, self._loop, self._args = name, loop, args
        self.stuck_after = stuck_after
        self._clock = clock
        self._stopping = threading.Event()
        self.thread: Optional[threading.Thread] = None
        self.restarts = 0
        self.failure: Optional[str] = None  # set while down: the exception, in one line
        self.last_alive = clock()

    def start(self) -> "Component":
        self.last_alive = self._clock()
        self.thread = spawn(self.name, self._run)
        return self


    def problem(self) -> Optional[str]:
        """Why this component is not doing its work, in words; None if it is."""
        if self.failure is not None:
            return f"{self.name} is down after {self.failure} (restart {self.restarts} pending)"
        if self.thread is not None and not self.thread.is_alive() and \
                not self._stopping.is_set():
            return f"{self.name} has ended"
        idle = self._clock() - self.last_alive
        if self.stuck_after is not None and idle > self.stuck_after:
            return f"{self.name} is stuck: no progress for {idle:.0f}s"
        return None

    def stop(self) -> None:
        """No more restarts; the owner stops the loop itself and joins `thread`."""
        self._stopping.set()

    def _run(self) -> None:
        _current.component = self
        delay = RESTART_FIRST
        while not self._stopping.is_set():
            began = self._clock()
            try:
                self._loop(*self._args)
                return
            except Exception as exc:  # anything the loop did not expect: log, count, restart
                self.restarts += 1
                self.failure = f"{type(exc).__name__}: {str(exc)[:200]}"
                if self._clock() - began >= RESTART_RESET:
                    delay = RESTART_FIRST
                log.exception("%s failed (%d restarts so far); starting it again in %.1fs",
                              self.name, self.restarts, delay)
            if self._stopping.wait(delay):
                return
            delay = min(2 * delay, RESTART_MAX)
            self.failure = None
            self.last_alive = self._clock()
            log.info("%s started again", self.name)


def alive() -> None:
    """Called by a guarded loop each time round, on its own thread: it is not stuck."""
    component = getattr(_current, "component", None)
    if component is not None:
        component.last_alive = component._clock()


def guard(name: str, loop: Callable, *args, stuck_after: Optional[float] = None) -> Component:
    """Start `loop(*args)` as a guarded Component (see there)."""
    return Component(name, loop, *args, stuck_after=stuck_after).start()


def halt(component: Optional[Component], timeout: float) -> bool:
    """No more restarts of `component` (None: never started), and wait up to `timeout`
    for its thread to end; its owner has already told the loop to return."""
    if component is None:
        return True
    component.stop()
    return join(component.thread, timeout)


def problems(components: List[Optional[Component]]) -> List[str]:
    """What is wrong with any of `components` (None entries are parts not running)."""
    return [p for p in (c.problem() for c in components if c is not None) if p]

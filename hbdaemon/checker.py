"""The health checker thread: wakes at the next deadline and convicts silent agents."""

import logging
import threading
import time
from typing import Callable, Optional

from hbdaemon.registry import Registry
from hbdaemon.threads import Component, alive, guard, halt

log = logging.getLogger(__name__)

MAX_SLEEP = 1.0
MIN_SLEEP = 0.01
# A pass reads every record: with thousands of agents whose deadlines fall a few ms apart it
# would run back to back and take the GIL from intake. Between passes the checker sleeps at
# least this many times as long as the last pass took (so it uses at most ~1/31 of the
# time); a verdict may then come that much after its deadline, never more than MAX_SLEEP
# (at 100,000 agents a pass takes ~40 ms: a verdict up to ~1.2 s late, for timeouts of
# a minute or more there, against ~9 % of a core at a ratio of 10).
PASS_RATIO = 30.0
STUCK_AFTER = 5.0  # plus stall_threshold: a pass is due at least every MAX_SLEEP


class HealthChecker:
    """Runs Registry.check at each deadline (at least once a second).

    If its own loop wakes far later than planned (SIGSTOP, a stalled host), it first
    grants every agent a fresh grace period instead of convicting them all at once.
    """

    def __init__(self, registry: Registry, stall_threshold: float,
                 clock: Callable[[], float] = time.monotonic):
        self._registry = registry
        self.stall_threshold = stall_threshold
        self._clock = clock
        self._stop = threading.Event()
        self.component: Optional[Component] = None
        self._planned: Optional[float] = None

    @property
    def stuck_after(self) -> float:
        """Seconds without a pass after which the checker counts as stuck (and the systemd
        watchdog goes unfed)."""
        return STUCK_AFTER + self.stall_threshold

    def start(self) -> None:
        self.component = guard("hb-health", self._loop, stuck_after=self.stuck_after)

    def stop(self, timeout: float) -> None:
        self._stop.set()
        halt(self.component, timeout)

    def run_once(self) -> float:
        """One pass; returns how long to sleep before the next."""
        now = self._clock()
        if self._planned is not None and now - self._planned > self.stall_threshold:
            self._registry.grant_grace(f"woke {now - self._planned:.1f}s late")
        next_due = self._registry.check()
        took, now = self._clock() - now, self._clock()
        shortest = min(MAX_SLEEP, max(MIN_SLEEP, PASS_RATIO * took))
        delay = MAX_SLEEP if next_due is None else min(MAX_SLEEP, max(shortest, next_due - now))
        self._planned = now + delay
        return delay

    def _loop(self) -> None:
        delay = 0.0
        while not self._stop.wait(delay):
            alive()
            delay = self.run_once()  # raises: the guard logs, counts and restarts the loop

"""How long whole-table operations keep one agent's heartbeat waiting: in-process, no sockets.

python bench/bench_lock.py [--agents 100000]

A Registry with `--agents` agents (fake monotonic clock; events through a real EventLog whose
log lines go to /dev/null, as at log level info). One thread runs each whole-table operation
in turn; another applies a heartbeat for one known agent every millisecond and records how
long each apply() took. The contract is that the registry lock is held in slices of < 50 ms;
apply latency is what an agent sees of it (lock wait plus the wait for the GIL), and the
longest single hold of the lock by the operation's thread is measured too (the registry's
lock wrapped in a timer).
"""

import argparse
import collections
import contextlib
import gc
import logging
import os
import sys
import threading
import time

from common import percentile, report
from hbdaemon import metrics
from hbdaemon.config import HealthCheckConfig
from hbdaemon.events import EventLog
from hbdaemon.health import PolicySet
from hbdaemon.logsetup import TEXT_FORMAT
from hbdaemon.protocol import Heartbeat
from hbdaemon.registry import Registry
from hbdaemon.stats import ReceiverStats

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))
from support.clock import FakeClock  # noqa: E402  (the tests' fake clock)

APPLY_EVERY = 0.001


class TimedLock:
    """A Lock that records how long each hold by one chosen thread lasted."""

    def __init__(self):
        self._lock = threading.Lock()
        self.watch = None  # thread ident whose holds are timed
        self.holds = []
        self._since = 0.0

    def acquire(self, *args) -> bool:
        got = self._lock.acquire(*args)
        if got and threading.get_ident() == self.watch:
            self._since = time.perf_counter()
        return got

    def release(self) -> None:
        if threading.get_ident() == self.watch:
            self.holds.append(time.perf_counter() - self._since)
        self._lock.release()

    __enter__ = acquire

    def __exit__(self, *exc) -> None:
        self.release()


class FullCollections:
    """Times the cyclic GC's full (generation 2) collections, in whichever thread they run."""

    def __init__(self):
        self.pauses = []  # (start, seconds)
        self._started = {}

    def __call__(self, phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started[threading.get_ident()] = time.perf_counter()
        else:
            started = self._started.pop(threading.get_ident())
            self.pauses.append((started, time.perf_counter() - started))

    def longest(self, start: float, end: float) -> float:
        return max((s for t, s in self.pauses if start <= t <= end), default=0.0)


class Applier:
    """Applies one known agent's heartbeat every APPLY_EVERY seconds on a thread."""

    def __init__(self, registry: Registry):
        self._registry = registry
        self._hb = Heartbeat("known-agent", 4242, version="1.0.0", cpu=1.5, memory=12582912)
        self._stop = threading.Event()
        self.samples = []  # (start, seconds)
        self._thread = threading.Thread(target=self._run, name="applier", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(APPLY_EVERY):
            started = time.perf_counter()
            self._registry.apply(self._hb, "http", remote="10.0.0.1")
            self.samples.append((started, time.perf_counter() - started))

    def during(self, start: float, end: float) -> list:
        return sorted(s for t, s in self.samples if start <= t <= end)


@contextlib.contextmanager
def daemon_logging():
    """Log as the daemon does at level info, into /dev/null: the formatting is paid."""
    handler = logging.FileHandler(os.devnull)
    handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


def build(agents: int):
    """A registry holding `agents` healthy agents (the known one comes with the first apply)."""
    clock = FakeClock()
    events = EventLog(10000)
    registry = Registry(PolicySet(HealthCheckConfig()), events.record, clock=clock,
                        pid_gone=lambda pid, started=None: False, max_agents=agents + 1)
    registry._lock = TimedLock()  # the same lock every method takes, now timed
    for i in range(agents):
        registry.apply(Heartbeat(f"agent-{i:06d}", 1000 + i, version="1.0.0", cpu=1.5,
                                 memory=12582912), "http", remote="10.0.0.2")
    return registry, events, clock


def measure(name: str, op, registry: Registry, applier: Applier,
            full_gcs: FullCollections) -> tuple:
    lock = registry._lock
    lock.watch, lock.holds = threading.get_ident(), []
    time.sleep(0.05)  # a few applies before, so the first one during is not a cold start
    start = time.perf_counter()
    op()
    end = time.perf_counter()
    lock.watch = None
    lat = applier.during(start, end)
    p99 = percentile(lat, 99) if lat else 0.0
    return (name, f"{(end - start) * 1000:.0f}", len(lock.holds),
            f"{max(lock.holds, default=0) * 1000:.1f}",
            f"{full_gcs.longest(start, end) * 1000:.1f}", len(lat),
            f"{p99 * 1000:.2f}", f"{(lat[-1] if lat else 0) * 1000:.2f}")


def main(argv=None) -> list:
    args = argparse.ArgumentParser()
    args.add_argument("--agents", type=int, default=100000)
    opts = args.parse_args(argv)
    with daemon_logging():
        return run(opts.agents)


def run(agents: int) -> list:
    started = time.perf_counter()
    registry, events, clock = build(agents)
    built = time.perf_counter() - started
    stats = ReceiverStats()
    # the daemon's other figures (queue, connections, hooks, ...): zeros are as costly to render
    extra = collections.defaultdict(int, max_agents=registry.max_agents, queue_capacity=1000)
    applier = Applier(registry)
    full_gcs = FullCollections()
    gc.callbacks.append(full_gcs)
    applier.start()
    rows = [("operation", "total ms", "lock holds", "longest hold ms", "longest full GC ms",
             "applies during", "apply p99 ms", "apply max ms")]
    rows.append(measure("(nothing: apply alone for 1 s)", lambda: time.sleep(1.0),
                        registry, applier, full_gcs))

    def drain():
        while registry.take_dirty():
            pass

    def convict():
        clock.advance(HealthCheckConfig().heartbeat_timeout + 1)
        registry.check()

    pages = []
    for name, op in (
            ("store flush: take_dirty() until empty", drain),
            ("snapshot() (GET /agents)", registry.snapshot),
            ("metric_rows()", registry.metric_rows),
            ("metrics.render() (GET /metrics)",
             lambda: pages.append(metrics.render(registry, stats, events, lambda: extra))),
            ("history() (GET /history)", registry.history),
            ("check(): every agent past its deadline", convict),
    ):
        rows.append(measure(name, op, registry, applier, full_gcs))
    applier.stop()
    gc.callbacks.remove(full_gcs)
    counts = registry.counts()
    report(f"Registry lock: {agents} agents (built in {built:.1f} s), a heartbeat "
           f"applied every {APPLY_EVERY * 1000:.0f} ms meanwhile; after check(): "
           f"{counts['no_heartbeat']} no_heartbeat, {counts['healthy']} healthy; "
           f"/metrics page {len(pages[0]) / 1e6:.1f} MB", rows)
    return rows


if __name__ == "__main__":
    main()

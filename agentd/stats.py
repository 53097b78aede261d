"""What the agent knows of itself: its process's CPU and memory, and its heartbeat record."""

import os
import threading
import time
from typing import Callable, Optional, Tuple

from agentd.protocol import format_rfc3339


class ProcessSampler:
    """This process's CPU as a percent of the whole machine, and its RSS.

    The same numbers as psutil's cpu_percent() / cpu_count() and memory_info().rss, read
    the cheap way: the process CPU clock and one pread of /proc/self/statm. psutil's
    /proc parsing cost ~0.35 ms a heartbeat, a third of the agent's budget. Primed at
    creation; a CPU figure needs a window of at least `min_window` seconds (a heartbeat
    interval): the first beat, a few milliseconds after start, would report the
    interpreter's own start-up as load. Until then cpu is None (the field is left out).
    """

    def __init__(self, cpu_time: Callable[[], float] = time.process_time,
                 rss: Optional[Callable[[], int]] = None,
                 clock: Callable[[], float] = time.monotonic, cpu_count: Optional[int] = None,
                 min_window: float = 0.0):
        self._cpu_time, self._clock = cpu_time, clock
        self._rss = rss or StatmReader().rss
        self._cpus = cpu_count or os.cpu_count() or 1
        self._last = (clock(), cpu_time())
        self.min_window = min_window
        self.cpu: Optional[float] = None
        self.memory = 0

    def sample(self) -> Tuple[Optional[float], int]:
        """(cpu percent of the machine 0-100 over the last window, or None before the first
        full window; rss bytes). A sample sooner than min_window after the last one keeps
        the last figure and lets the window grow."""
        now, used = self._clock(), self._cpu_time()
        then, before = self._last
        if now > then and now - then >= self.min_window:
            self._last = (now, used)
            self.cpu = min(100.0, max(0.0, (used - before) / (now - then) * 100.0 / self._cpus))
        try:
            self.memory = self._rss()
        except OSError:
            pass  # keep the last value
        return self.cpu, self.memory


class StatmReader:
    """Resident set size from /proc/self/statm through one descriptor kept open."""

    def __init__(self):
        self._fd = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        self._page = os.sysconf("SC_PAGE_SIZE")

    def rss(self) -> int:
        return int(os.pread(self._fd, 128, 0).split()[1]) * self._page


class AgentStats:
    """Counters fed by the success/failure callbacks; read by the status API. Thread-safe."""

    def __init__(self, agent_id: str, version: str, transport: str,
                 clock: Callable[[], float] = time.monotonic,
                 wallclock: Callable[[], float] = time.time):
        self._lock = threading.Lock()
        self._clock, self._wall = clock, wallclock
        self.agent_id, self.version, self.transport = agent_id, version, transport
        self.started = clock()
        self.status = "starting"
        self.heartbeat_count = 0
        self.heartbeat_failures = 0
        self.consecutive_failures = 0
        self.last_heartbeat: Optional[float] = None       # wall time of the last success
        self.last_heartbeat_mono: Optional[float] = None
        self.last_error = ""
        self.connected = False
        self.cpu = 0.0
        self.memory = 0

    def on_success(self, status: str, cpu: float, memory: int) -> None:
        with self._lock:
            self.heartbeat_count += 1
            self.consecutive_failures = 0
            self.last_heartbeat, self.last_heartbeat_mono = self._wall(), self._clock()
            self.connected, self.status, self.cpu, self.memory = True, status, cpu, memory

    def on_failure(self, error: str) -> None:
        with self._lock:
            self.heartbeat_failures += 1
            self.consecutive_failures += 1
            self.last_error, self.connected = error, False

    def healthy(self, interval: float) -> bool:
        """A heartbeat got through within the last 3 intervals."""
        with self._lock:
            last = self.last_heartbeat_mono
        return last is not None and self._clock() - last <= 3 * interval

    def uptime(self) -> float:
        return self._clock() - self.started

    def snapshot(self) -> dict:
        """The Go agent's metrics document, plus connection details."""
        with self._lock:
            return {
                "agent_id": self.agent_id, "version": self.version,
                "uptime": round(self.uptime(), 3), "heartbeat_count": self.heartbeat_count,
                "heartbeat_failures": self.heartbeat_failures,
                "last_heartbeat": format_rfc3339(self.last_heartbeat) if self.last_heartbeat else None,
                "cpu_percent": self.cpu, "memory_bytes": self.memory, "status": self.status,
                "connected": self.connected, "transport": self.transport,
                "last_error": self.last_error, "consecutive_failures": self.consecutive_failures,
            }

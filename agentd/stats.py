"""What the agent knows of itself: its process's CPU and memory, and its heartbeat record."""

import threading
import time
from typing import Callable, Optional, Tuple

import psutil


class ProcessSampler:
    """CPU as a percent of the whole machine, and RSS, of one process (default: this one).

    Primed at creation, so the first sample is a real reading; the last values are cached.
    """

    def __init__(self, process=None, cpu_count: Optional[int] = None):
        self._proc = process or psutil.Process()
        self._cpus = cpu_count or psutil.cpu_count() or 1
        self._proc.cpu_percent(None)
        self.cpu = 0.0
        self.memory = 0

    def sample(self) -> Tuple[float, int]:
        """(cpu percent of the machine 0-100, rss bytes); the last good values if psutil fails."""
        try:
            with self._proc.oneshot():
                cpu = self._proc.cpu_percent(None) / self._cpus
                memory = self._proc.memory_info().rss
        except psutil.Error:
            return self.cpu, self.memory
        self.cpu, self.memory = min(100.0, max(0.0, cpu)), memory
        return self.cpu, self.memory


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
        from agentd.protocol import format_rfc3339
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

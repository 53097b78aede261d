"""Is a local process gone? The check behind `dead`."""

import os
import re
import select
import time
from typing import Optional

import psutil

# After SIGKILL the kernel closes the socket a moment before the process turns zombie,
# so an EOF can be seen while the pid still looks alive: look again briefly.
EXIT_RECHECKS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1)


def create_time(pid: int) -> Optional[float]:
    """The process's start time (to tell a reused pid apart), or None if unknown."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError, OverflowError, ValueError):  # OSError: EMFILE, say
        return None


# Programs whose own name says little: an instance is named by the script it runs instead.
_INTERPRETER = re.compile(r"(python|perl|ruby|node|nodejs|php|java|bash|sh|dash|zsh|lua)"
                          r"[0-9.]*$")


def program_name(pid: int) -> Optional[str]:
    """What process `pid` runs, in one word: its executable's file name (from argv[0] when
    the executable is not readable, as for another user's process without ptrace rights),
    or for an interpreter the script or `-m` module it runs. None if the process is gone.
    Names an agent that sent no agent_id; it is the process's own say, like an agent_id."""
    try:
        proc = psutil.Process(pid)
        argv = proc.cmdline()
        try:
            path = proc.exe()
        except psutil.AccessDenied:
            path = ""
        name = os.path.basename(path.split(" (deleted)")[0]) or _argv0(argv) or proc.name()
    except (psutil.Error, OSError, OverflowError, ValueError):
        return None
    if _INTERPRETER.match(name):
        name = _script(argv[1:]) or name
    return name or None


def _argv0(argv: list) -> str:
    """The program named by argv[0], which daemons such as nginx and postgres rewrite to
    `nginx: master process ...`: the first word, up to a colon, without its directory."""
    if not argv or not argv[0]:
        return ""
    return os.path.basename(argv[0].split(" ")[0].rstrip(":"))


def _script(args: list) -> str:
    """The script (or `-m` module) an interpreter was started with, or "" (`-c` code)."""
    for i, arg in enumerate(args):
        if arg.startswith("-c"):
            return ""
        if arg == "-m" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("-m") and len(arg) > 2:
            return arg[2:]
        if arg and not arg.startswith("-"):
            return os.path.basename(arg)
    return ""


class StartTimes:
    """create_time() remembered for `ttl` seconds: a burst of heartbeats from one process
    (many ids, or a flood) reads /proc once. A pid reused within `ttl` is not noticed; a
    second is far shorter than the kernel takes to cycle through pids."""

    def __init__(self, ttl: float = 1.0, size: int = 4096, clock=time.monotonic):
        self._ttl, self._size, self._clock = ttl, size, clock
        self._seen: dict = {}  # pid -> (when read, start time)

    def get(self, pid: int) -> Optional[float]:
        now = self._clock()
        hit = self._seen.get(pid)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        if len(self._seen) >= self._size:
            self._seen.clear()
        started = create_time(pid)
        self._seen[pid] = (now, started)
        return started


def pid_gone(pid: int, started: Optional[float] = None) -> bool:
    """True if no process `pid` runs: absent, zombie, or a different process reusing the pid."""
    try:
        proc = psutil.Process(pid)
        if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return True
        if started is not None and abs(proc.create_time() - started) > 1.0:
            return True
    except psutil.NoSuchProcess:  # includes ZombieProcess
        return True
    except (psutil.AccessDenied, OSError, OverflowError, ValueError):
        return False  # cannot tell (no file descriptor to read /proc, say): not gone
    return False


def wait_gone(pid: int, started: Optional[float] = None, sleep=time.sleep) -> bool:
    """pid_gone, looked at again over ~0.2 s to ride out the exit race above."""
    if pid_gone(pid, started):
        return True
    exited = _wait_exit(pid, sum(EXIT_RECHECKS))
    if exited is not None:
        return exited or pid_gone(pid, started)
    for delay in EXIT_RECHECKS:
        sleep(delay)
        if pid_gone(pid, started):
            return True
    return False


def _wait_exit(pid: int, timeout: float) -> Optional[bool]:
    """Wait for `pid` to exit on a pidfd (Linux >= 5.3): one wait outside the GIL instead of
    a poll that needs it back at every step, which a busy daemon gives slowly. True if it
    exited, False if it still runs, None if pidfds are not available here."""
    try:
        fd = _open_pidfd(pid)
    except ProcessLookupError:
        return True
    if fd is None:
        return None
    try:
        return _readable(fd, timeout)
    finally:
        os.close(fd)


def _open_pidfd(pid: int) -> Optional[int]:
    """A pidfd for `pid`, or None where the kernel or Python has none. Raises
    ProcessLookupError if there is no such process."""
    try:
        return os.pidfd_open(pid)
    except AttributeError:  # Python built without it
        return None
    except ProcessLookupError:
        raise
    except OSError:  # ENOSYS on old kernels, EPERM under some sandboxes
        return None


def _readable(fd: int, timeout: float) -> bool:
    """A pidfd turns readable when its process has exited (poll: any fd number, unlike select)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout * 1000))))


class PeerProcess:
    """The process at the other end of a Unix connection, held by a pidfd from the moment it
    connects (Linux >= 5.3): its end is then seen without reading /proc, and a pid reused
    since cannot be mistaken for it. Without pidfds it is looked up by pid and start time."""

    __slots__ = ("pid", "started", "_fd")

    def __init__(self, pid: int):
        self.pid, self.started = pid, create_time(pid)
        try:
            self._fd = _open_pidfd(pid)
        except ProcessLookupError:
            self._fd = -1  # already gone

    def exited(self, timeout: float = 0.0) -> bool:
        """Has the process ended? Waits up to `timeout` seconds for it to."""
        if self._fd == -1:
            return True
        if self._fd is None:
            return wait_gone(self.pid, self.started) if timeout else \
                pid_gone(self.pid, self.started)
        return _readable(self._fd, timeout)

    def close(self) -> None:
        if self._fd is not None and self._fd >= 0:
            os.close(self._fd)
        self._fd = None

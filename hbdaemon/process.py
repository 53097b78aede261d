"""Is a local process gone? The check behind `dead`."""

import os
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
    except (psutil.Error, OverflowError, ValueError):
        return None


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
    except (psutil.AccessDenied, OverflowError, ValueError):
        return False
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
        fd = os.pidfd_open(pid)
    except AttributeError:  # Python built without it
        return None
    except ProcessLookupError:
        return True
    except OSError:  # ENOSYS on old kernels, EPERM under some sandboxes
        return None
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)

"""Processes agentd reports besides itself: found by pidfile, systemd unit or command-line
match (`watch:`), or started by `agentd run`. Each is an agent of its own to the daemon.

A target's end is seen without polling: a pidfd (Linux >= 5.3) turns readable when its
process exits, and one thread waits on all of them (ExitWatcher). A process agentd did
not start leaves no exit status to read; a child of `agentd run` does.
"""

import errno
import logging
import os
import re
import select
import stat
import subprocess
import threading
import time
from typing import Callable, Dict, Optional, Tuple

import psutil

log = logging.getLogger(__name__)

PIDFILE_SLACK = 2.0   # s: a service may start a moment before it writes its pidfile
POLL_FALLBACK = 0.5   # s between /proc checks where pidfds are not available
SYSTEMCTL_TIMEOUT = 5.0


class Target:
    """One watched process: where to find it, the one found (pid and start time), and its
    CPU and memory since the last look."""

    def __init__(self, agent_id: str, how: str, locate: Callable[[], Tuple[Optional[int], str]],
                 stop_asked: Callable[[], bool] = lambda: False,
                 probe: Optional[Callable[[], Optional[str]]] = None, failures: int = 3,
                 reread: bool = False):
        self.agent_id, self.how = agent_id, how
        self._locate = locate
        self.lock = threading.Lock()  # a beat for it, or the news of its end: one at a time
        self.reread = reread  # look again at every beat (a pidfile: cheap, and may change)
        self.done = False  # its last word is said (`agentd run`'s child): no more beats
        self._probe, self._failures_allowed = probe, failures
        self.failures = 0  # probes failed in a row
        self.stop_asked = stop_asked  # after an end: was it asked to stop (not a crash)?
        self.pid: Optional[int] = None
        self.last_pid: Optional[int] = None  # the last one found (kept once it ended)
        self.started: Optional[float] = None
        self.detail = ""          # why there is no process now, in words
        self._proc: Optional[psutil.Process] = None
        self._last: Optional[Tuple[float, float]] = None  # (monotonic, cpu seconds)
        self._cpus = os.cpu_count() or 1

    def locate(self) -> bool:
        """Look for the process; True if one is found (self.pid), else self.detail says why."""
        pid, detail = self._locate()
        if pid is None:
            self.pid, self._proc, self.detail = None, None, detail
            return False
        try:
            proc = psutil.Process(pid)
            started = proc.create_time()
        except psutil.Error:
            self.pid, self._proc, self.detail = None, None, f"process {pid} is gone"
            return False
        leader = _thread_group(pid)
        if leader not in (None, pid):  # psutil takes a thread's id too: not a process
            self.pid, self._proc = None, None
            self.detail = f"pid {pid} is a thread of process {leader}, not a process"
            return False
        if pid != self.pid or started != self.started:
            self._last = None  # a new process: its CPU window starts now
        self.pid = self.last_pid = pid
        self.started, self._proc, self.detail = started, proc, ""
        return True

    def moved(self) -> bool:
        """Does the target's place (its pidfile) name another valid process than the one
        held? A pidfile gone or stale meanwhile is not a move: the live one is kept."""
        pid, _ = self._locate()
        return pid is not None and pid != self.pid

    def forget(self, detail: str = "") -> None:
        """The process ended: look for the next one at the next beat."""
        self.pid, self._proc, self._last = None, None, None
        self.detail = detail

    def unresponsive(self) -> str:
        """Run the probe (if any): what failed, once it has failed `failures` times in a
        row (the process is alive but not answering), else ""."""
        if self._probe is None:
            return ""
        error = self._probe()
        self.failures = self.failures + 1 if error else 0
        if error and self.failures >= self._failures_allowed:
            return f"{error} ({self.failures} probes in a row failed)"
        return ""

    def sample(self) -> Tuple[Optional[float], int]:
        """(cpu percent of the machine since the last sample, None on the first; rss bytes).
        Raises psutil.Error if the process is gone."""
        times = self._proc.cpu_times()
        rss = self._proc.memory_info().rss
        now, used = time.monotonic(), times.user + times.system
        cpu = None
        if self._last is not None and now > self._last[0]:
            cpu = min(100.0, max(0.0, (used - self._last[1]) / (now - self._last[0])
                                 * 100.0 / self._cpus))
        self._last = (now, used)
        return cpu, rss


# -- where a target is found ------------------------------------------------------------------

def pidfile_locator(path: str) -> Callable[[], Tuple[Optional[int], str]]:
    """The pid in `path`, unless the file is missing, holds no pid, or is stale: its pid is
    gone, or belongs to a process started after the file was written (a reused pid)."""
    def locate() -> Tuple[Optional[int], str]:
        try:  # without blocking: a FIFO or a device in its place must not stop the beat
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        except FileNotFoundError:
            return None, f"pidfile {path} does not exist"
        except OSError as exc:
            return None, f"pidfile {path} cannot be read: {exc.strerror or exc}"
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None, f"pidfile {path} is not a regular file"
            text, written = os.read(fd, 64), st.st_mtime
        except OSError as exc:
            return None, f"pidfile {path} cannot be read: {exc.strerror or exc}"
        finally:
            os.close(fd)
        first = text.split(b"\n", 1)[0].strip()
        if not first.isdigit() or not 0 < int(first) < 2**22 + 1:
            return None, f"pidfile {path} holds no pid"
        pid = int(first)
        try:
            proc = psutil.Process(pid)
            started = proc.create_time()
            zombie = proc.status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            return None, f"pidfile {path} is stale: process {pid} is gone"
        if zombie:
            return None, f"pidfile {path} is stale: process {pid} has exited"
        if started > written + PIDFILE_SLACK:
            return None, (f"pidfile {path} is stale: pid {pid} now belongs to a process "
                          "started after the file was written")
        return pid, ""
    return locate


def match_locator(pattern: str, exclude: Callable[[], set]) -> Callable[[], Tuple[Optional[int], str]]:
    """The oldest process whose command line (arguments joined by spaces) matches `pattern`
    (re.search), leaving out agentd itself and the pids `exclude()` names."""
    rx = re.compile(pattern)

    def locate() -> Tuple[Optional[int], str]:
        mine = exclude() | {os.getpid()}
        best = None
        for pid, line, started in _process_table():
            if pid not in mine and rx.search(line) and (best is None or started < best[1]):
                best = (pid, started)
        if best is None:
            return None, f"no process matches {pattern!r}"
        return best[0], ""
    return locate


# where system units' cgroups are: cgroup v2, then the hybrid and v1 layouts
CGROUP_ROOTS = ("/sys/fs/cgroup/system.slice", "/sys/fs/cgroup/unified/system.slice",
                "/sys/fs/cgroup/systemd/system.slice")


def unit_properties(unit: str, run=subprocess.run) -> Tuple[Dict[str, str], str]:
    """MainPID and ActiveState of a systemd unit, or ({}, why not)."""
    try:
        out = run(["systemctl", "show", "--property=MainPID", "--property=ActiveState",
                   "--property=NRestarts", "--property=Result", "--", unit],
                  capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT)
    except (OSError, subprocess.SubprocessError) as exc:
        return {}, f"cannot ask systemd about unit {unit}: {exc}"
    props = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    if out.returncode != 0 or not props.get("MainPID", "").isdigit():
        return {}, f"unit {unit}: {out.stderr.strip() or 'systemctl show failed'}"
    return props, ""


_TABLE_TTL = 0.5  # s: the match targets of one beat share one scan of the process table
_table: list = [0.0, []]
_table_lock = threading.Lock()


def _process_table() -> list:
    """(pid, command line, start time) of every live process, read at most every TTL."""
    with _table_lock:
        if time.monotonic() - _table[0] >= _TABLE_TTL:
            rows = []
            for proc in psutil.process_iter(["pid", "cmdline", "create_time", "status"]):
                info = proc.info
                if info["cmdline"] and info["status"] != psutil.STATUS_ZOMBIE:
                    rows.append((info["pid"], " ".join(info["cmdline"]),
                                 info["create_time"] or 0.0))
            _table[:] = [time.monotonic(), rows]
        return _table[1]


def _thread_group(pid: int) -> Optional[int]:
    """The process (thread group) a pid belongs to, from /proc; None if unknown."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def unit_locator(unit: str, run=subprocess.run, cgroups: Tuple[str, ...] = CGROUP_ROOTS,
                 seen: Optional[dict] = None) -> Callable[[], Tuple[Optional[int], str]]:
    """The MainPID of a systemd unit (systemctl show); where systemctl cannot answer (no
    D-Bus for an unprivileged agentd, say), the oldest process in the unit's cgroup.
    `seen` keeps the properties of the last look (see unit_stop_asked)."""
    def locate() -> Tuple[Optional[int], str]:
        props, why = unit_properties(unit, run)
        if seen is not None:
            seen.clear()
            seen.update(props)
        if not props:
            for root in cgroups:
                pid = _oldest_in_cgroup(os.path.join(root, unit, "cgroup.procs"))
                if pid is not None:
                    return pid, ""
            return None, why
        if int(props["MainPID"]) == 0:
            return None, f"unit {unit} has no main process ({props.get('ActiveState', '?')})"
        return int(props["MainPID"]), ""
    return locate


def unit_stop_asked(unit: str, run=subprocess.run,
                    seen: Optional[dict] = None) -> Callable[[], bool]:
    """After its main process ended: was the unit stopped or restarted on purpose, not
    failing? A stop job is under way before the process is signalled (deactivating); a
    restart may be over by the time we ask, so a new main process that no automatic
    restart (NRestarts, from the last look, `seen`) started after a clean end counts too."""
    def asked() -> bool:
        props, _ = unit_properties(unit, run)
        if props.get("ActiveState") in ("deactivating", "inactive"):
            return props.get("Result", "success") == "success"
        before = seen or {}
        return (props.get("ActiveState") in ("active", "activating", "reloading")
                and props.get("Result") == "success"
                and props.get("MainPID") not in ("0", before.get("MainPID"))
                and props.get("NRestarts") == before.get("NRestarts"))
    return asked


def _oldest_in_cgroup(procs_file: str) -> Optional[int]:
    try:
        with open(procs_file) as f:
            pids = [int(line) for line in f if line.strip().isdigit()]
    except OSError:
        return None
    oldest = None
    for pid in pids:
        try:
            started = psutil.Process(pid).create_time()
        except psutil.Error:
            continue
        if oldest is None or started < oldest[1]:
            oldest = (pid, started)
    return oldest[0] if oldest else None


def target_for(cfg, exclude: Callable[[], set]) -> Target:
    """The Target of one `watch:` entry."""
    from agentd.probes import make_probe
    probe = make_probe(cfg.probe), cfg.probe.failures
    if cfg.unit:
        seen: dict = {}
        return Target(cfg.agent_id, cfg.how, unit_locator(cfg.unit, seen=seen),
                      unit_stop_asked(cfg.unit, seen=seen), *probe)
    if cfg.pidfile:  # read again every beat: a service that rewrote it is seen at once
        return Target(cfg.agent_id, cfg.how, pidfile_locator(cfg.pidfile), lambda: False,
                      *probe, reread=True)
    return Target(cfg.agent_id, cfg.how, match_locator(cfg.match, exclude), lambda: False,
                  *probe)


# -- seeing them end ---------------------------------------------------------------------------

class ExitWatcher:
    """Calls on_exit(target, pid) as soon as a watched process ends, from its own thread:
    one poll() over a pidfd per process, or a check every POLL_FALLBACK seconds where the
    kernel or Python has no pidfds (said once in the log)."""

    def __init__(self, on_exit: Callable[[Target, int], None]):
        self._on_exit = on_exit
        self._lock = threading.Lock()
        self._watched: Dict[int, Tuple[Target, int, Optional[float]]] = {}  # key -> ...
        self._poller = select.poll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poller.register(self._wake_r, select.POLLIN)
        self._pidfds = hasattr(os, "pidfd_open")
        self._said_fallback = False
        self._stopped = False
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="agentd-exits", daemon=True)
        self._thread.start()

    def watch(self, target: Target, pid: int, started: Optional[float]) -> bool:
        """Watch `pid` for `target` (replacing what it watched before); False if there is
        no such process any more (the caller reports its end: on_exit is not called, so
        no lock the caller holds is taken again here)."""
        self.unwatch(target)
        fd = None
        if self._pidfds:
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                return False
            except OSError as exc:
                if exc.errno not in (errno.ENOSYS, errno.EPERM):
                    return False  # ENOENT, EINVAL: not a process (a thread id, say)
                self._pidfds = False  # the kernel or a sandbox has none: poll everybody
                self._fallback(f"pidfd_open: {exc.strerror or exc}")
        else:
            self._fallback("this Python has no os.pidfd_open")
        with self._lock:
            key = fd if fd is not None else -pid
            self._watched[key] = (target, pid, started)
            if fd is not None:
                self._poller.register(fd, select.POLLIN)
        self._wake()
        return True

    def unwatch(self, target: Target) -> None:
        with self._lock:
            for key in [k for k, (t, _, _) in self._watched.items() if t is target]:
                self._drop(key)

    def stop(self) -> None:
        self._stopped = True
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"w")
        except BlockingIOError:  # the pipe is full of wake-ups already: one is enough
            pass

    def _fallback(self, why: str) -> None:
        if not self._said_fallback:
            self._said_fallback = True
            log.warning("watching processes without pidfds (%s): their ends are seen within "
                        "%.1fs, not at once", why, POLL_FALLBACK)

    def _drop(self, key: int) -> None:
        """Under the lock: stop watching `key` (a pidfd, or -pid in the fallback)."""
        self._watched.pop(key, None)
        if key >= 0:
            try:
                self._poller.unregister(key)
            except KeyError:
                pass
            os.close(key)

    def _run(self) -> None:
        while not self._stopped:
            try:
                with self._lock:
                    polling = any(key < 0 for key in self._watched)
                ready = self._poller.poll(POLL_FALLBACK * 1000 if polling else None)
                self._check(ready)
            except Exception:  # the watcher must not die: every target's end depends on it
                log.exception("agentd: the exit watcher failed; carrying on")
                time.sleep(POLL_FALLBACK)

    def _check(self, ready) -> None:
        ended = []
        with self._lock:
            for fd, _ in ready:
                if fd == self._wake_r:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                elif fd in self._watched:
                    target, pid, _ = self._watched[fd]
                    self._drop(fd)
                    ended.append((target, pid))
            for key in [k for k in self._watched if k < 0]:
                target, pid, started = self._watched[key]
                if _gone(pid, started):
                    self._drop(key)
                    ended.append((target, pid))
        for target, pid in ended:
            self._on_exit(target, pid)


def _gone(pid: int, started: Optional[float]) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() == psutil.STATUS_ZOMBIE or (
            started is not None and proc.create_time() != started)
    except psutil.Error:
        return True

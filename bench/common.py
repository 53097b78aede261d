"""Shared by the benchmarks: a real hbdaemon on a temp config, and process CPU/RSS readings."""

import contextlib
import ctypes
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import psutil
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout=15.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(interval)
    raise RuntimeError("timed out waiting")


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


@contextlib.contextmanager
def hbdaemon(stderr=None, repo: str = REPO, **overrides):
    """Run the real daemon (log level warning) and yield (proc, http_url, socket_path).

    overrides: config sections merged over the defaults, e.g. agent={"max_agents": 10};
    stderr: a file for the daemon's log (default: this process's stderr);
    repo: the directory whose hbdaemon package runs (another version, to compare)."""
    tmp = tempfile.mkdtemp(prefix="hbb", dir="/tmp")
    port = free_port()
    sock = os.path.join(tmp, "hb.sock")
    cfg = {"daemon": {"state_dir": os.path.join(tmp, "state")}, "log": {"level": "warning"},
           "unix": {"socket_path": sock, "socket_group": ""},
           "http": {"host": "127.0.0.1", "port": port}}
    for section, values in overrides.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:  # a list (webhooks, hooks): as given
            cfg[section] = values
    path = os.path.join(tmp, "hb.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    proc = subprocess.Popen([sys.executable, "-m", "hbdaemon", "-c", path], cwd=repo, stderr=stderr)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: get_json(url + "/healthz") and os.path.exists(sock))
        yield proc, url, sock
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


_libc = ctypes.CDLL(None, use_errno=True)


def cpu_seconds(pid: int) -> float:
    """The process's CPU time, all threads, dead ones included: its CLOCK_PROCESS_CPUTIME_ID
    (clock_getcpuclockid), exact to the nanosecond rather than /proc's 10 ms ticks."""
    clock = ctypes.c_int()
    err = _libc.clock_getcpuclockid(pid, ctypes.byref(clock))
    if err:
        raise OSError(err, f"clock_getcpuclockid({pid}): {os.strerror(err)}")
    return time.clock_gettime(clock.value)


def rss_bytes(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def percentile(values, p: float) -> float:
    """Nearest rank on the sorted values (as bench_crash reports its p99)."""
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    return (f"{cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
            f"Linux {platform.release()}, Python {platform.python_version()}")


def report(title: str, rows) -> None:
    print(f"\n## {title}\n")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")

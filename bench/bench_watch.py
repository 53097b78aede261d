"""agentd watching processes it did not start: how soon a kill -9 is `dead`, and what each
watched target costs agentd.

python bench/bench_watch.py [--trials 20] [--seconds 60] [--targets 20]

- kill -9 of a watched `sleep` (behind a pidfile; agentd's beat every 30 s, so only the
  pidfd wake-up can be this quick): the `dead` record's state_since (daemon clock) minus
  the moment of the kill (same host clock), `--trials` times;
- agentd with `--targets` watched sleeps against agentd watching none, both at a 1 s
  interval for `--seconds`, in the same window: CPU from the process CPU clock (all its
  threads, ended Timer threads included), per target per beat, and peak RSS beside a
  bare `python3 -c 'import psutil, yaml'`.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.error

import yaml

from common import cpu_seconds, get_json, hbdaemon, percentile, report, rss_bytes, wait_until
from hbdaemon.protocol import parse_rfc3339


def start_agentd(tmp: str, name: str, sock: str, watch: list, interval: str) -> subprocess.Popen:
    cfg = {"agent_id": name, "log": {"level": "warning"}, "http": {"port": 0},
           "heartbeat": {"socket_path": sock, "interval": interval}, "watch": watch}
    path = os.path.join(tmp, f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return subprocess.Popen([sys.executable, "-m", "agentd", "-c", path])


def sleeper(pidfile: str) -> subprocess.Popen:
    proc = subprocess.Popen(["sleep", "3600"])
    with open(pidfile + ".tmp", "w") as f:
        f.write(f"{proc.pid}\n")
    os.replace(pidfile + ".tmp", pidfile)
    return proc


def agent(url: str, agent_id: str):
    try:
        return get_json(f"{url}/agents/{agent_id}")
    except urllib.error.HTTPError:
        return None


def kill_trials(url: str, sock: str, tmp: str, trials: int) -> list:
    pidfile = os.path.join(tmp, "victim.pid")
    proc = sleeper(pidfile)
    watcher = start_agentd(tmp, "watch-kill", sock,
                           [{"agent_id": "victim", "pidfile": pidfile}], "30s")
    took = []
    try:
        for _ in range(trials):
            wait_until(lambda: (agent(url, "victim") or {}).get("pid") == proc.pid
                       and agent(url, "victim")["state"] == "healthy", timeout=60)
            time.sleep(0.2)
            killed = time.time()
            proc.kill()
            proc.wait()
            wait_until(lambda: agent(url, "victim")["state"] == "dead", timeout=30,
                       interval=0.001)
            # state_since: the daemon's clock, to the millisecond
            took.append((parse_rfc3339(agent(url, "victim")["state_since"]) - killed) * 1000)
            proc = sleeper(pidfile)  # the restart, found again by agentd
    finally:
        proc.kill()
        watcher.kill()
        watcher.wait()
    return took


def cost(url: str, sock: str, tmp: str, targets: int, seconds: int) -> list:
    sleeps = [sleeper(os.path.join(tmp, f"t{n}.pid")) for n in range(targets)]
    bare = subprocess.Popen([sys.executable, "-c",
                             f"import psutil, yaml, time; time.sleep({seconds + 60})"])
    watch = [{"agent_id": f"t{n}", "pidfile": os.path.join(tmp, f"t{n}.pid")}
             for n in range(targets)]
    procs = {"none": start_agentd(tmp, "watch-none", sock, [], "1s"),
             "targets": start_agentd(tmp, "watch-many", sock, watch, "1s")}
    try:
        wait_until(lambda: all((agent(url, f"t{n}") or {}).get("state") == "healthy"
                               for n in range(targets)), timeout=60)
        time.sleep(3)
        before = {k: (cpu_seconds(p.pid), time.monotonic()) for k, p in procs.items()}
        peak = {k: 0 for k in list(procs) + ["bare"]}
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(2)
            for k, p in procs.items():
                peak[k] = max(peak[k], rss_bytes(p.pid))
            peak["bare"] = max(peak["bare"], rss_bytes(bare.pid))
        used = {k: cpu_seconds(p.pid) - before[k][0] for k, p in procs.items()}
        beats = min(time.monotonic() - before[k][1] for k in procs)  # 1 s interval
    finally:
        for p in list(procs.values()) + sleeps + [bare]:
            p.kill()
            p.wait()
    per_target = (used["targets"] - used["none"]) / beats / targets * 1000
    return [("agentd", "targets", "CPU ms per beat", "CPU ms per target per beat",
             "RSS MB (peak)", "× bare"),
            ("bare python3 + psutil + yaml", "", "", "", f"{peak['bare'] / 1e6:.1f}", "1.00"),
            ("watching none", 0, f"{used['none'] / beats * 1000:.2f}", "",
             f"{peak['none'] / 1e6:.1f}", f"{peak['none'] / peak['bare']:.2f}"),
            (f"watching {targets}", targets, f"{used['targets'] / beats * 1000:.2f}",
             f"{per_target:.3f}", f"{peak['targets'] / 1e6:.1f}",
             f"{peak['targets'] / peak['bare']:.2f}")]


def main(argv=None) -> list:
    args = argparse.ArgumentParser()
    args.add_argument("--trials", type=int, default=20)
    args.add_argument("--seconds", type=int, default=60)
    args.add_argument("--targets", type=int, default=20)
    opts = args.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="hbw", dir="/tmp")
    with hbdaemon() as (_, url, sock):
        took = kill_trials(url, sock, tmp, opts.trials)
        rows = cost(url, sock, tmp, opts.targets, opts.seconds)
    report(f"kill -9 of a watched process -> dead ({opts.trials} trials, agentd beat 30 s)",
           [("p50 ms", "p99 ms", "max ms"),
            (f"{percentile(took, 50):.1f}", f"{percentile(took, 99):.1f}", f"{max(took):.1f}")])
    print("in trial order:", ", ".join(f"{t:.1f}" for t in took))
    report(f"agentd cost of watched targets ({opts.seconds} s at a 1 s interval)", rows)
    return rows


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()

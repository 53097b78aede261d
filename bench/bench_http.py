"""HTTP heartbeats/s with wrk -t2 -c32 (keep-alive), hbdaemon beside the floor server.

python bench/bench_http.py [--seconds 10] [--rounds 2] [--baseline DIR] [--ids 100]
                           [--fixed-floor] [--new-connections]
--baseline DIR: also run the hbdaemon package found in DIR each round (another version,
e.g. `git archive COMMIT hbdaemon | tar -x -C DIR`), to measure a change in the same run.
--ids N: the agent ids wrk cycles over (each server first gets a warm-up run that
creates them, not measured; 6 s). --fixed-floor: the floor answers a fixed body instead of
formatting a time per answer. --new-connections: each request on a new connection
(Connection: close), as the upstream reporter sends.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys

from common import REPO, cpu_seconds, free_port, hbdaemon, report

HERE = os.path.dirname(os.path.abspath(__file__))


OPTIONS = {"ids": 100, "close": False}


def run_wrk(url: str, seconds: int) -> dict:
    close = ["-H", "Connection: close"] if OPTIONS["close"] else []
    out = subprocess.run(["wrk", "-t2", "-c32", f"-d{seconds}s", "--latency", *close,
                          "-s", os.path.join(HERE, "post.lua"), url + "/heartbeat"],
                         capture_output=True, text=True, timeout=seconds + 60, check=True,
                         env=dict(os.environ, WRK_IDS=str(OPTIONS["ids"]))).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    pct = {p: _ms(re.search(rf"^\s+{p}%\s+(\S+)", out, re.M).group(1)) for p in ("50", "99")}
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rate": rate, "total": total, "p50": pct["50"], "p99": pct["99"],
            "non2xx": int(bad.group(1)) if bad else 0}


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def measure(pid: int, url: str, seconds: int) -> dict:
    if OPTIONS["ids"] > 100:
        run_wrk(url, 6)  # the ids' first heartbeats (new records): not measured
    before = cpu_seconds(pid)
    result = run_wrk(url, seconds)
    result["cpu_us"] = (cpu_seconds(pid) - before) / max(1, result["total"]) * 1e6
    return result


def floor_run(seconds: int) -> dict:
    port = free_port()
    env = dict(os.environ, **({"FLOOR_FIXED": "1"} if OPTIONS.get("fixed") else {}))
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "floor_servers.py"), "http", str(port)],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        proc.stdout.readline()
        return measure(proc.pid, f"http://127.0.0.1:{port}", seconds)
    finally:
        proc.kill()
        proc.wait()


def hbdaemon_run(seconds: int, repo: str = REPO) -> dict:
    with hbdaemon(repo=repo, agent={"new_agents_per_minute": 0,
                                    "max_agents": max(50000, 2 * OPTIONS["ids"])}) as (proc, url, _):
        return measure(proc.pid, url, seconds)


def main(argv=None) -> list:
    args = argparse.ArgumentParser()
    args.add_argument("--seconds", type=int, default=10)
    args.add_argument("--rounds", type=int, default=2)
    args.add_argument("--baseline", metavar="DIR", help="also run the hbdaemon package in DIR")
    args.add_argument("--ids", type=int, default=100)
    args.add_argument("--fixed-floor", action="store_true")
    args.add_argument("--new-connections", action="store_true")
    opts = args.parse_args(argv)
    OPTIONS.update(ids=opts.ids, fixed=opts.fixed_floor, close=opts.new_connections)
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt install wrk")
    servers = [("floor", floor_run), ("hbdaemon", hbdaemon_run)]
    if opts.baseline:
        servers.insert(1, ("baseline", lambda s: hbdaemon_run(s, os.path.abspath(opts.baseline))))
    rows = [("server", "round", "heartbeats/s", "p50 ms", "p99 ms", "server CPU µs/heartbeat",
             "non-2xx")]
    totals = {name: [] for name, _ in servers}
    for rnd in range(1, opts.rounds + 1):
        for name, fn in servers:
            r = fn(opts.seconds)
            totals[name].append(r["rate"])
            rows.append((name, rnd, f"{r['rate']:.0f}", f"{r['p50']:.2f}", f"{r['p99']:.2f}",
                         f"{r['cpu_us']:.0f}", r["non2xx"]))
    for name, _ in servers[1:]:
        ratio = sum(totals[name]) / sum(totals["floor"])
        rows.append((f"{name} / floor", "", f"{ratio:.2f}", "", "", "", ""))
    report(f"HTTP: wrk -t2 -c32 -d{opts.seconds}s, "
           f"{'a new connection each' if opts.new_connections else 'keep-alive'}, {opts.ids} ids, "
           f"floor {'a fixed body' if opts.fixed_floor else 'formats a time'}", rows)
    return rows


if __name__ == "__main__":
    main()

"""Unix heartbeats/s over 1 and 8 connections: hbdaemon (validated and registered) beside
the floor (a ThreadingUnixStreamServer that only parses JSON lines); then hbdaemon with
many ids per connection (one agentd watching many targets): 8 connections of 1,000 ids
each against one connection of 8,000, the ids created by a first round not measured.

python bench/bench_unix.py [--count 200000]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

from common import cpu_seconds, get_json, hbdaemon, report, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))


def blast(sock_path: str, connections: int, total: int, done, ids: int = 0) -> tuple:
    """Start `connections` senders (each cycling over `ids` ids, or one), release them
    together; returns (seconds, lines)."""
    per = total // connections
    many = ["--ids", str(ids)] if ids else []
    clients = [subprocess.Popen([sys.executable, os.path.join(HERE, "unix_client.py"), sock_path,
                                 str(per), f"bench-{i}", *many], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True) for i in range(connections)]
    for c in clients:
        c.stdout.readline()
    started = time.perf_counter()
    for c in clients:
        c.stdin.write("go\n")
        c.stdin.flush()
    wait_until(lambda: done() >= per * connections, timeout=300, interval=0.005)
    elapsed = time.perf_counter() - started
    for c in clients:
        c.stdin.close()
        c.wait(30)
    return elapsed, per * connections


def hbdaemon_run(connections: int, total: int, ids: int = 0) -> dict:
    with hbdaemon(agent={"new_agents_per_minute": 0}) as (proc, url, sock):
        if ids:  # the ids' first heartbeats create them: not measured
            blast(sock, connections, connections * ids,
                  lambda: get_json(url + "/stats")["total_processed"], ids)
        base = get_json(url + "/stats")["total_processed"]
        cpu = cpu_seconds(proc.pid)
        elapsed, lines = blast(sock, connections, total,
                               lambda: get_json(url + "/stats")["total_processed"] - base, ids)
        cpu = cpu_seconds(proc.pid) - cpu
        errors = get_json(url + "/stats")["total_errors"]
    return {"rate": lines / elapsed, "cpu_us": cpu / lines * 1e6, "errors": errors}


def floor_run(connections: int, total: int) -> dict:
    tmp = tempfile.mkdtemp(prefix="hbf", dir="/tmp")
    sock, count_file = os.path.join(tmp, "floor.sock"), os.path.join(tmp, "count")
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "floor_servers.py"), "unix", sock],
                            stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, FLOOR_COUNT_FILE=count_file))
    proc.stdout.readline()
    cpu = cpu_seconds(proc.pid)
    try:
        elapsed, lines = blast(sock, connections, total, lambda: _read_count(count_file))
        cpu = cpu_seconds(proc.pid) - cpu
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return {"rate": lines / elapsed, "cpu_us": cpu / lines * 1e6, "errors": 0}


def _read_count(path: str) -> int:
    try:
        with open(path) as f:
            return int(f.read() or 0)
    except (OSError, ValueError):
        return 0


def main(argv=None) -> list:
    args = argparse.ArgumentParser()
    args.add_argument("--count", type=int, default=200000)
    opts = args.parse_args(argv)
    rows = [("server", "connections", "heartbeats/s", "server CPU µs/heartbeat", "errors")]
    for connections in (1, 8):
        for name, fn in (("floor", floor_run), ("hbdaemon", hbdaemon_run)):
            r = fn(connections, opts.count)
            rows.append((name, connections, f"{r['rate']:.0f}", f"{r['cpu_us']:.1f}", r["errors"]))
    for connections, ids in ((8, 1000), (1, 8000)):
        r = hbdaemon_run(connections, opts.count, ids)
        rows.append((f"hbdaemon, {ids:,} ids per connection", connections, f"{r['rate']:.0f}",
                     f"{r['cpu_us']:.1f}", r["errors"]))
    report(f"Unix socket: {opts.count} heartbeats per run, one JSON line each", rows)
    return rows


if __name__ == "__main__":
    main()

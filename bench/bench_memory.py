"""Daemon RSS with 10,000 agents known (registered over one Unix connection).

python bench/bench_memory.py [--agents 10000]
"""

import argparse
import json
import os
import socket
import time

from common import get_json, hbdaemon, report, rss_bytes, wait_until


def main(argv=None) -> list:
    args = argparse.ArgumentParser()
    args.add_argument("--agents", type=int, default=10000)
    opts = args.parse_args(argv)
    # no per-uid limit on new ids (agent.new_agents_per_minute): one connection registers all
    with hbdaemon(agent={"new_agents_per_minute": 0}) as (proc, url, sock):
        idle = rss_bytes(proc.pid)
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        lines = b"".join((json.dumps({
            "agent_id": f"mem-{i:05d}", "pid": os.getpid(), "version": "1.0.0",
            "timestamp": "2026-11-27T20:35:24.456284565Z", "cpu": 1.5,
            "memory": 12582912}) + "\n").encode() for i in range(opts.agents))
        s.sendall(lines)
        wait_until(lambda: get_json(url + "/stats")["agents"] >= opts.agents, timeout=120)
        time.sleep(3)  # a store flush and a few checker passes
        get_json(url + "/agents")  # one full API read too
        loaded = rss_bytes(proc.pid)
        s.close()
    rows = [("agents", "RSS idle MB", "RSS with agents MB", "per agent KB"),
            (opts.agents, f"{idle / 1e6:.1f}", f"{loaded / 1e6:.1f}",
             f"{(loaded - idle) / opts.agents / 1e3:.2f}")]
    report(f"Daemon memory with {opts.agents} agents", rows)
    return rows


if __name__ == "__main__":
    main()

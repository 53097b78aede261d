"""Crash detection: kill -9 of a connected Unix agent until the daemon records `dead`.

python bench/bench_crash.py [--trials 20]
Latency = the dead event's time (daemon clock) minus the moment of the kill (same host clock).
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time

from common import get_json, hbdaemon, report, wait_until
from hbdaemon.protocol import parse_rfc3339

CLIENT = """
import json, os, socket, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
s.sendall((json.dumps({"agent_id": sys.argv[2], "pid": os.getpid()}) + "\\n").encode())
print("sent", flush=True)
time.sleep(600)
"""


def trial(url: str, sock: str, n: int) -> float:
    agent_id = f"crash-{n}"
    proc = subprocess.Popen([sys.executable, "-c", CLIENT, sock, agent_id], stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()
    wait_until(lambda: get_json(f"{url}/agents/{agent_id}")["state"] == "healthy")
    killed = time.time()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_until(lambda: get_json(f"{url}/agents/{agent_id}")["state"] == "dead", interval=0.01)
    event = get_json(f"{url}/events?agent={agent_id}")["events"][-1]
    return (parse_rfc3339(event["time"]) - killed) * 1000


def main(argv=None) -> list:
    args = argparse.ArgumentParser()
    args.add_argument("--trials", type=int, default=20)
    opts = args.parse_args(argv)
    with hbdaemon() as (_, url, sock):
        times = sorted(trial(url, sock, n) for n in range(opts.trials))
    p99 = times[min(len(times) - 1, int(round(0.99 * (len(times) - 1))))]
    rows = [("trials", "min ms", "median ms", "p99 ms", "max ms"),
            (len(times), f"{times[0]:.1f}", f"{statistics.median(times):.1f}", f"{p99:.1f}",
             f"{times[-1]:.1f}")]
    report("Crash detection: kill -9 of a connected Unix agent -> dead", rows)
    return rows


if __name__ == "__main__":
    main()

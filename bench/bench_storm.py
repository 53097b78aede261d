"""An event storm against HTTP intake: 10,000 agents at full wrk speed.

python bench/bench_storm.py [--agents 10000] [--seconds 10] [--rounds 2]

wrk -t2 -c32 (keep-alive, bench/storm.lua) posts heartbeats for `--agents` ids in turn,
all with this process's pid (a live local process), against a fresh daemon each time
(agent.new_agents_per_minute: 0, so that only the storm is measured), its log written to
a pipe
(read by `cat` into a file, as journald reads a unit's stderr):
- calm: log level warning: the first heartbeats' events are recorded but not logged;
- storm: the default log level (info): each of the `--agents` first heartbeats logs
  `unknown -> healthy`;
- storm-2s: info and a 2 s heartbeat_timeout: an id comes round every agents / rate
  seconds, about 2 s, so agents that wait longer turn no_heartbeat and back;
- churn-1s: info and a 1 s heartbeat_timeout: every agent turns no_heartbeat and back on
  every round of ids, thousands of state changes a second for the length of the run.
Reports heartbeats/s, 503s and other non-2xx, the events recorded by the end of the run,
the largest backlog of events waiting for hb-events (/stats `event_backlog`, sampled every
0.25 s), and each storm's rate as a share of the calm one in the same round.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading

from common import get_json, hbdaemon, report

HERE = os.path.dirname(os.path.abspath(__file__))

SCENARIOS = (
    ("calm", {"log": {"level": "warning"}}),
    ("storm", {"log": {"level": "info"}}),
    ("storm-2s", {"log": {"level": "info"},
                  "agent": {"health_check": {"heartbeat_timeout": "2s"}}}),
    ("churn-1s", {"log": {"level": "info"},
                  "agent": {"health_check": {"heartbeat_timeout": "1s"}}}),
)


def run_wrk(url: str, seconds: int, agents: int) -> dict:
    out = subprocess.run(["wrk", "-t2", "-c32", f"-d{seconds}s", "-s",
                          os.path.join(HERE, "storm.lua"), url + "/heartbeat", "--",
                          str(agents), str(os.getpid())],
                         capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rate": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "total": int(re.search(r"(\d+) requests in", out).group(1)),
            "non2xx": int(bad.group(1)) if bad else 0}


def scenario(config: dict, seconds: int, agents: int) -> dict:
    sections = {"agent": {"new_agents_per_minute": 0}}
    for section, values in config.items():
        if section == "agent":
            sections["agent"] = {**sections["agent"], **values}
        else:
            sections[section] = values
    with tempfile.NamedTemporaryFile() as log:
        # the log goes down a pipe to a reader, as to journald under systemd
        reader = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=log)
        try:
            with hbdaemon(stderr=reader.stdin, **sections) as (_, url, _s):
                backlog, done = [0], threading.Event()

                def sample():  # the events queued for hb-events, every 0.25 s
                    while not done.wait(0.25):
                        try:
                            backlog.append(get_json(url + "/stats").get("event_backlog", 0))
                        except OSError:
                            pass

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                try:
                    result = run_wrk(url, seconds, agents)
                finally:
                    done.set()
                    sampler.join(10)
                stats = get_json(url + "/stats")
                metrics = urllib_text(url + "/metrics")
                result["backlog"] = max(backlog)
        finally:
            reader.stdin.close()
            reader.wait(30)
        result["events"] = sum(int(float(v)) for v in re.findall(
            r"^hbdaemon_events_total\{[^}]*\} (\S+)$", metrics, re.M))
        result["refused"] = {k: v for k, v in stats["errors_by_reason"].items()
                             if k != "superseded"}  # 503s name their reason here
        result["logged"] = os.path.getsize(log.name)
        result["agents"] = stats["agents"]
    return result


def urllib_text(url: str) -> str:
    import urllib.request
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.read().decode()


def main(argv=None) -> list:
    args = argparse.ArgumentParser()
    args.add_argument("--agents", type=int, default=10_000)
    args.add_argument("--seconds", type=int, default=10)
    args.add_argument("--rounds", type=int, default=2)
    opts = args.parse_args(argv)
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt install wrk")
    rows = [("scenario", "round", "heartbeats/s", "× calm", "non-2xx", "events", "agents",
             "log bytes", "max event backlog", "refused by the daemon")]
    for rnd in range(1, opts.rounds + 1):
        calm = None
        for name, config in SCENARIOS:
            r = scenario(config, opts.seconds, opts.agents)
            calm = calm or r["rate"]
            rows.append((name, rnd, f"{r['rate']:.0f}", f"{r['rate'] / calm:.2f}", r["non2xx"],
                         r["events"], r["agents"], r["logged"], r["backlog"],
                         ", ".join(f"{k} {v}" for k, v in r["refused"].items()) or "none"))
            print(rows[-1], file=sys.stderr, flush=True)
    report(f"Event storm: {opts.agents} HTTP agents, wrk -t2 -c32 -d{opts.seconds}s", rows)
    return rows


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(HERE))
    main()

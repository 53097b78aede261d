"""agentd's cost: RSS and CPU per heartbeat at a 1 s interval, beside a bare Python process.

python bench/bench_agentd.py [--seconds 300]
Runs, in the same window: agentd over Unix, agentd over HTTP,
`python3 -c 'import psutil, yaml, time; time.sleep(N)'` as the yardstick for memory, and
bench/floor_agent.py (a bare loop re-arming a threading.Timer and sending one JSON
datagram a second; and the same loop posting over a kept-alive HTTP connection to the same
daemon, reading the answer with one recv) as the floors for CPU per beat. CPU is each process's CPU clock: every
thread, the ended Timer threads included.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

from common import cpu_seconds, free_port, hbdaemon, report, rss_bytes, wait_until


HERE = os.path.dirname(os.path.abspath(__file__))


def start_agentd(tmp: str, name: str, transport: str, sock: str, url: str):
    port = free_port()
    cfg = {"agent_id": name, "log": {"level": "warning"}, "http": {"port": port},
           "heartbeat": {"transport": transport, "socket_path": sock,
                         "url": url + "/heartbeat", "interval": "1s"}}
    path = os.path.join(tmp, f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    proc = subprocess.Popen([sys.executable, "-m", "agentd", "-c", path])
    status_url = f"http://127.0.0.1:{port}/status"
    wait_until(lambda: urllib.request.urlopen(status_url, timeout=2).status == 200)
    return proc, status_url


def main(argv=None) -> list:
    args = argparse.ArgumentParser()
    args.add_argument("--seconds", type=int, default=300)
    opts = args.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="hba", dir="/tmp")
    with hbdaemon() as (_, url, sock):
        bare = subprocess.Popen([sys.executable, "-c",
                                 f"import psutil, yaml, time; time.sleep({opts.seconds + 60})"])
        agents = {t: start_agentd(tmp, f"bench-{t}", t, sock, url) for t in ("unix", "http")}
        floors = {"datagram": _floor(str(free_port())), "http": _floor(url + "/heartbeat")}
        time.sleep(2)
        start = {t: (cpu_seconds(p.pid), _count(u)) for t, (p, u) in agents.items()}
        floor_start = {f: cpu_seconds(p.pid) for f, p in floors.items()}
        began = time.monotonic()
        peak = {t: 0 for t in agents}
        peak["bare"] = 0
        deadline = time.monotonic() + opts.seconds
        while time.monotonic() < deadline:
            time.sleep(5)
            for t, (p, _) in agents.items():
                peak[t] = max(peak[t], rss_bytes(p.pid))
            peak["bare"] = max(peak["bare"], rss_bytes(bare.pid))
        floor_beats = int(time.monotonic() - began)
        floor_ms = {}
        for f, p in floors.items():
            floor_ms[f] = (cpu_seconds(p.pid) - floor_start[f]) / max(1, floor_beats) * 1000
            p.kill()
            p.wait()
        rows = [("process", "RSS MB (peak)", "× bare", "heartbeats", "CPU ms/heartbeat",
                 "× datagram floor", "× its transport's floor")]
        rows.append(("bare python3 + psutil + yaml", f"{peak['bare'] / 1e6:.1f}", "1.00", "", "",
                     "", ""))
        rows.append(("floor: Timer re-armed + one datagram", "", "", floor_beats,
                     f"{floor_ms['datagram']:.3f}", "1.00", ""))
        rows.append(("floor: Timer re-armed + one kept-alive POST", "", "", floor_beats,
                     f"{floor_ms['http']:.3f}", f"{floor_ms['http'] / floor_ms['datagram']:.2f}",
                     "1.00"))
        for t, (p, u) in agents.items():
            cpu0, n0 = start[t]
            beats = _count(u) - n0
            cpu = cpu_seconds(p.pid) - cpu0
            per_beat = cpu / max(1, beats) * 1000
            own = floor_ms["http" if t == "http" else "datagram"]
            rows.append((f"agentd ({t})", f"{peak[t] / 1e6:.1f}", f"{peak[t] / peak['bare']:.2f}",
                         beats, f"{per_beat:.3f}", f"{per_beat / floor_ms['datagram']:.2f}",
                         f"{per_beat / own:.2f}"))
            p.terminate()
            p.wait(10)
        bare.kill()
        bare.wait()
    report(f"agentd at a 1 s interval for {opts.seconds} s", rows)
    return rows


def _floor(where: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "floor_agent.py"), "1", where],
                            stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()
    return proc


def _count(status_url: str) -> int:
    with urllib.request.urlopen(status_url, timeout=5) as resp:
        return json.loads(resp.read())["heartbeat_count"]


if __name__ == "__main__":
    main()

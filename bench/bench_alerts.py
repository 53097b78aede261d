"""Alerts: from a kill -9 to the notification, and what hung receivers cost intake.

python bench/bench_alerts.py [--trials 20] [--beats 1000]
Needs Debian's prometheus-alertmanager. In one run:
- the floor: an alert POSTed straight to Alertmanager (group_wait 0s) until its webhook
  notification reaches a receiver on loopback;
- kill -9 of a connected Unix agent until Alertmanager's notification naming it reaches
  that receiver, and until hbdaemon's own webhook reaches it (both configured at once);
- p50/p99 of `--beats` HTTP heartbeats (one kept-alive connection) with no alerting, and
  with an Alertmanager URL and a webhook that never answer, 30 events queued for them.
Times are the receiver's arrival (monotonic) minus the moment before the kill or POST.
"""

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from common import REPO, get_json, hbdaemon, percentile, report, wait_until

sys.path.insert(0, os.path.join(REPO, "tests"))
from support.alertmanager import Alertmanager, Receiver, am_alerts  # noqa: E402

CLIENT = """
import json, os, socket, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
s.sendall((json.dumps({"agent_id": sys.argv[2], "pid": os.getpid()}) + "\\n").encode())
print("sent", flush=True)
time.sleep(600)
"""


def arrival(rx: Receiver, path: str, agent_id: str, timeout: float = 10.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for arrived, p, _, _, doc in list(rx.posts):
            if p != path or doc is None:
                continue
            if path == "/am" and ("firing", agent_id) in am_alerts(doc):
                return arrived
            if path == "/hook" and doc["event"]["agent_id"] == agent_id:
                return arrived
        time.sleep(0.002)
    raise RuntimeError(f"no notification for {agent_id} at {path}")


def floor(am: Alertmanager, rx: Receiver, n: int) -> float:
    alert = [{"labels": {"alertname": "Floor", "agent_id": f"floor-{n}"}}]
    started = time.monotonic()
    req = urllib.request.Request(am.url + "/api/v2/alerts", json.dumps(alert).encode(),
                                 {"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=5).read()
    return (arrival(rx, "/am", f"floor-{n}") - started) * 1000


def crash(url: str, sock: str, rx: Receiver, n: int):
    agent_id = f"crash-{n}"
    proc = subprocess.Popen([sys.executable, "-c", CLIENT, sock, agent_id],
                            stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()
    wait_until(lambda: get_json(f"{url}/agents/{agent_id}")["state"] == "healthy")
    killed = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return ((arrival(rx, "/am", agent_id) - killed) * 1000,
            (arrival(rx, "/hook", agent_id) - killed) * 1000)


def heartbeats(url: str, beats: int) -> list:
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    times = []
    for n in range(beats):
        body = json.dumps({"agent_id": f"load-{n % 50}", "pid": os.getpid()})
        started = time.perf_counter()
        conn.request("POST", "/heartbeat", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        times.append((time.perf_counter() - started) * 1000)
        assert resp.status == 200, resp.status
    conn.close()
    return times


def stats(values) -> tuple:
    values = sorted(values)
    return (len(values), f"{values[0]:.1f}", f"{statistics.median(values):.1f}",
            f"{percentile(values, 99):.1f}", f"{values[-1]:.1f}")


def intake(sock_agents: int, beats: int, **alerting) -> list:
    with hbdaemon(**alerting) as (_, url, sock):
        procs = []
        for n in range(sock_agents):  # crashes whose alerts queue behind the hung receivers
            proc = subprocess.Popen([sys.executable, "-c", CLIENT, sock, f"crash-{n}"],
                                    stdout=subprocess.PIPE, text=True)
            proc.stdout.readline()
            procs.append(proc)
        for proc in procs:
            proc.kill()
            proc.wait()
        heartbeats(url, 100)  # warm up
        return heartbeats(url, beats)


def main(argv=None) -> list:
    args = argparse.ArgumentParser()
    args.add_argument("--trials", type=int, default=20)
    args.add_argument("--beats", type=int, default=1000)
    opts = args.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="hbal", dir="/tmp")
    rx, hang = Receiver(), Receiver("hang")
    am = Alertmanager(tmp, rx.url).start()
    rows = [("path", "trials", "min ms", "median ms", "p99 ms", "max ms")]
    try:
        rows.append(("floor: POST an alert to Alertmanager -> receiver",
                     *stats([floor(am, rx, n) for n in range(opts.trials)])))
        with hbdaemon(alertmanager={"urls": [am.url]},
                      webhooks=[{"url": rx.url + "/hook"}]) as (_, url, sock):
            results = [crash(url, sock, rx, n) for n in range(opts.trials)]
        rows.append(("kill -9 -> Alertmanager -> receiver", *stats([r[0] for r in results])))
        rows.append(("kill -9 -> hbdaemon's webhook -> receiver",
                     *stats([r[1] for r in results])))
        quiet = intake(0, opts.beats)
        hung = intake(30, opts.beats, alertmanager={"urls": [hang.url], "timeout": "60s"},
                      webhooks=[{"url": hang.url + "/hook", "timeout": "60s",
                                 "queue_size": 10}])
        rows.append((f"{opts.beats} HTTP heartbeats, no alerting", *stats(quiet)))
        rows.append((f"{opts.beats} HTTP heartbeats, Alertmanager and webhook hung",
                     *stats(hung)))
    finally:
        am.kill()
        rx.close()
        hang.close()
    report("Alerts: kill -9 to notification; intake beside hung receivers", rows)
    return rows


if __name__ == "__main__":
    main()

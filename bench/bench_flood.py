"""A flood of new agent ids against the bounded agent table, while a known agent keeps beating
and crashes keep being detected.

python bench/bench_flood.py [--ids 200000] [--trials 20] [--log-level info] [--repo DIR]

The real daemon (agent.max_agents at its default, agent.new_agents_per_minute: 0 so that only
the table limit refuses, log level info unless told) gets `--ids` new agent ids at full
speed: half over the Unix socket (4 connections, each line a new id, the sender's real pid),
half over HTTP (wrk -t2 -c32, keep-alive, bench/flood.lua). Meanwhile:
- a known agent (registered before the flood) sends a heartbeat every 50 ms over HTTP on its
  own keep-alive connection (bench/http_probe.py): status and latency of every answer;
- the daemon's RSS is sampled every 20 ms;
- `--trials` times, a real Unix agent (tests/support/unix_agent.py) speaks for an id known
  before the flood, is killed with SIGKILL, and the `dead` record's state_since (daemon
  clock) minus the moment of the kill (same host clock) is the latency.
Per-agent memory: RSS before the flood and once the table is full and the daemon idle again.
Then /agents, /metrics and /history are read twice each; the RSS after each read is noted.
"""

import argparse
import glob
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from common import REPO, cpu_seconds, get_json, hbdaemon, percentile, report, wait_until
from hbdaemon.protocol import parse_rfc3339

HERE = os.path.dirname(os.path.abspath(__file__))
UNIX_AGENT = os.path.join(REPO, "tests", "support", "unix_agent.py")
UNIX_CONNECTIONS = 4
PROBE_INTERVAL = 0.05
HEADROOM = 50e6  # the bound: max_agents x per-agent size + 50 MB
_PAGE = os.sysconf("SC_PAGE_SIZE")


def fetch(url: str) -> int:
    """GET `url`; the size of the answer."""
    with urllib.request.urlopen(url, timeout=60) as resp:
        return len(resp.read())


def post_heartbeat(url: str, agent_id: str, pid: int) -> int:
    body = json.dumps({"agent_id": agent_id, "pid": pid}).encode()
    req = urllib.request.Request(url + "/heartbeat", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status


class RssSampler:
    """Samples a process's RSS (/proc/PID/statm) every `interval` seconds on a thread."""

    def __init__(self, pid: int, interval: float = 0.02):
        self._path, self._interval = f"/proc/{pid}/statm", interval
        self._stop = threading.Event()
        self.samples = []  # (monotonic time, bytes)
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def read(self) -> int:
        with open(self._path) as f:
            return int(f.read().split()[1]) * _PAGE

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.samples.append((time.monotonic(), self.read()))

    def peak(self, since: float = 0.0, until: float = float("inf")) -> int:
        return max(rss for t, rss in self.samples if since <= t <= until)


class CrashTrials:
    """Kill -9 of connected Unix agents, one after another, on a thread."""

    def __init__(self, url: str, sock: str, ids: list, flooding: threading.Event):
        self.url, self.sock, self.ids, self.flooding = url, sock, ids, flooding
        self.results = []  # (latency ms, flood still running at the kill)
        self.lines_sent = 0  # heartbeat lines the agents sent (one each)
        self.error = None
        self._thread = threading.Thread(target=self._run, name="crash-trials", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            for agent_id in self.ids:
                self.results.append(self._trial(agent_id))
        except Exception as exc:  # reported with the figures, not lost in a thread
            self.error = exc

    def _trial(self, agent_id: str) -> tuple:
        proc = subprocess.Popen([sys.executable, UNIX_AGENT, self.sock, agent_id, "600"],
                                stdout=subprocess.PIPE, text=True)
        try:
            proc.stdout.readline()
            self.lines_sent += 1
            agent = f"{self.url}/agents/{agent_id}"
            wait_until(lambda: _held_by(get_json(agent), proc.pid), timeout=60, interval=0.005)
            during = self.flooding.is_set()
            killed = time.time()
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            wait_until(lambda: get_json(agent)["state"] == "dead", timeout=60, interval=0.005)
            return (parse_rfc3339(get_json(agent)["state_since"]) - killed) * 1000, during
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _held_by(record: dict, pid: int) -> bool:
    return record["connected"] and record["pid"] == pid and record["state"] == "healthy"


def start_unix_flood(sock: str, total: int) -> list:
    per = total // UNIX_CONNECTIONS
    clients = [subprocess.Popen([sys.executable, os.path.join(HERE, "unix_client.py"), sock,
                                 str(per), f"flood-u{i}", "--new-ids"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for i in range(UNIX_CONNECTIONS)]
    for c in clients:
        c.stdout.readline()
    return clients


def start_wrk(url: str, per_thread: int, done_path: str, seconds: int) -> subprocess.Popen:
    return subprocess.Popen(["wrk", "-t2", "-c32", f"-d{seconds}s", "--timeout", "10s",
                             "-s", os.path.join(HERE, "flood.lua"), url + "/heartbeat", "--",
                             str(per_thread), "flood-h", str(os.getpid()), done_path],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def flood(opts) -> dict:
    """Run the daemon through the flood; returns what was measured."""
    http_ids = opts.ids // 2 // 2 * 2  # two wrk threads, the same share each
    unix_ids = (opts.ids - http_ids) // UNIX_CONNECTIONS * UNIX_CONNECTIONS
    tmp = tempfile.mkdtemp(prefix="hbflood", dir="/tmp")
    log_path, done_path = os.path.join(tmp, "daemon.log"), os.path.join(tmp, "wrk-done")
    crash_ids = [f"crash-{n}" for n in range(opts.trials)]
    r = {"unix_ids": unix_ids}
    with open(log_path, "wb") as log_file, \
            hbdaemon(stderr=log_file, repo=opts.repo, log={"level": opts.log_level},
                     agent={"new_agents_per_minute": 0}) as (proc, url, sock):
        probe = subprocess.Popen([sys.executable, os.path.join(HERE, "http_probe.py"), url,
                                  "known-http", str(PROBE_INTERVAL)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        probe.stdout.readline()
        for agent_id in crash_ids:  # known before the flood: a full table refuses new ids
            post_heartbeat(url, agent_id, os.getpid())
        wait_until(lambda: get_json(url + "/stats")["agents"] == len(crash_ids) + 1)
        time.sleep(3)  # a store flush and a few checker passes
        rss = RssSampler(proc.pid)
        r["before"], r["rss_before"] = get_json(url + "/stats"), rss.read()
        clients = start_unix_flood(sock, unix_ids)
        flooding = threading.Event()
        trials = CrashTrials(url, sock, crash_ids, flooding)

        rss.start()
        flooding.set()
        cpu0, r["t0"], r["wall0"] = cpu_seconds(proc.pid), time.monotonic(), time.time()
        wrk = start_wrk(url, http_ids // 2, done_path, opts.timeout)
        for c in clients:
            c.stdin.write("go\n")
            c.stdin.flush()
        trials.start()
        r.update(watch(url, r["t0"] + opts.timeout, unix_ids, r["before"], trials, done_path))
        flooding.clear()
        r["t_end"], r["wall_end"] = time.monotonic(), time.time()
        r["cpu"] = cpu_seconds(proc.pid) - cpu0
        wrk.send_signal(signal.SIGINT)
        r["wrk"] = wrk.communicate(timeout=60)[0]
        trials.join(120)
        wait_until(lambda: get_json(url + "/stats")["queue_depth"] == 0)
        time.sleep(3)  # the store writes the new records; the daemon is idle again
        rss.stop()
        r["after"], r["rss_after"] = get_json(url + "/stats"), rss.read()
        r["reads"] = [(path, fetch(url + path), rss.read())
                      for path in ("/agents", "/metrics", "/history") * 2]
        probe.stdin.close()
        r["beats"] = json.loads(probe.stdout.read())
        probe.wait(10)
    for c in clients:  # after the daemon: at EOF it would judge every id they spoke for
        c.stdin.close()
        c.wait(30)
    with open(log_path, "rb") as f:
        r["log"] = f.read().splitlines()
    shutil.rmtree(tmp, ignore_errors=True)
    r["rss"], r["trials"] = rss, trials
    return r


def watch(url: str, deadline: float, unix_ids: int, before: dict, trials: CrashTrials,
          done_path: str) -> dict:
    """Poll /stats until both floods are in: when the table filled, when each ended."""
    seen = {"table_full": None, "unix_done": None, "http_done": None}
    unix_base = before["received_by_transport"].get("unix", 0)
    while time.monotonic() < deadline and not (seen["unix_done"] and seen["http_done"]):
        stats = get_json(url + "/stats")
        now = time.monotonic()
        if seen["table_full"] is None and stats["agents"] >= stats["max_agents"]:
            seen["table_full"] = now
        unix_in = stats["received_by_transport"].get("unix", 0) - unix_base - trials.lines_sent
        if seen["unix_done"] is None and unix_in >= unix_ids:
            seen["unix_done"] = now
        if seen["http_done"] is None and len(glob.glob(done_path + "-*")) == 2:
            seen["http_done"] = now
        time.sleep(0.05)
    return seen


def intake_table(r: dict) -> list:
    """Accepted and refused new ids per transport."""
    flood_line = re.search(r"flood: sent=(\d+) accepted=(\d+) refused=(\d+) "
                           r"unavailable=(\d+) other=(\d+)", r["wrk"])
    if not flood_line:
        sys.exit(f"wrk said:\n{r['wrk']}")
    h_sent, h_ok, h_429, h_503, h_other = (int(x) for x in flood_line.groups())
    refused = r["after"]["errors_by_reason"].get("max_agents", 0)
    new_agents = r["after"]["agents"] - r["before"]["agents"]
    unix_ids, t0 = r["unix_ids"], r["t0"]
    return [
        ("transport", "connections", "new ids sent", "accepted", "refused (max_agents)",
         "other answers", "ids/s"),
        ("unix", UNIX_CONNECTIONS, unix_ids, new_agents - h_ok, refused - h_429,
         unix_ids - (new_agents - h_ok) - (refused - h_429), _rate(unix_ids, r["unix_done"], t0)),
        ("http", 32, h_sent, h_ok, h_429, f"{h_503} × 503, {h_other} other",
         _rate(h_sent, r["http_done"], t0)),
        ("both", "", unix_ids + h_sent, new_agents, refused, "",
         _rate(unix_ids + h_sent, r["t_end"], t0)),
    ]


def health_table(r: dict, bound: float) -> list:
    """What a known agent, a crash and the daemon's memory looked like during the flood."""
    wall0, wall_end, table_full = r["wall0"], r["wall_end"], r["table_full"]
    wall_full = wall0 + (table_full - r["t0"]) if table_full else wall_end
    beats = r["beats"]
    during = [(status, ms) for sent, status, ms in beats if wall0 <= sent <= wall_end]
    filling = [(status, ms) for sent, status, ms in beats if wall0 <= sent < wall_full]
    full = [(status, ms) for sent, status, ms in beats if wall_full <= sent <= wall_end]
    trials = r["trials"]
    crash = [ms for ms, flooding in trials.results if flooding]
    late = [ms for ms, flooding in trials.results if not flooding]
    rss = r["rss"]
    full_rss = (f"{rss.peak(table_full - 0.5, table_full + 0.5) / 1e6:.1f} MB when the table "
                f"filled ({table_full - r['t0']:.1f} s in)") if table_full else "table never filled"
    return [("during the flood", "measured", "target"),
            (f"known agent over HTTP, every {PROBE_INTERVAL * 1000:.0f} ms: {len(during)} beats",
             _beats(during), "p99 < 50 ms"),
            (f"… while the table filled ({len(filling)} beats)", _beats(filling), ""),
            (f"… once it was full ({len(full)} beats)", _beats(full), ""),
            (f"kill -9 → dead, {len(crash)} trials during the flood",
             (f"p50 {statistics.median(crash):.1f} ms, p99 {percentile(crash, 99):.1f} ms, "
              f"max {max(crash):.1f} ms" if crash else "none")
             + (f" ({len(late)} more after it: max {max(late):.1f} ms)" if late else "")
             + (f"; failed: {trials.error!r}" if trials.error else ""),
             "p99 < 10 ms"),
            ("daemon RSS, peak of samples every 20 ms",
             f"{rss.peak(r['t0'], r['t_end']) / 1e6:.1f} MB ({full_rss}); "
             f"{r['rss_after'] / 1e6:.1f} MB idle after", f"≤ {bound / 1e6:.1f} MB"),
            ]


def _beats(beats: list) -> str:
    """p50/p99/max latency of (status, ms) answers and how many were not 200."""
    if not beats:
        return "none"
    lat = [ms for _, ms in beats]
    not_ok = {}
    for status, _ in beats:
        if status != 200:
            not_ok[status] = not_ok.get(status, 0) + 1
    return (f"p50 {statistics.median(lat):.1f} ms, p99 {percentile(lat, 99):.1f} ms, "
            f"max {max(lat):.1f} ms; not 200: {sum(not_ok.values())}"
            + "".join(f", {n} × {code or 'no answer'}" for code, n in sorted(not_ok.items())))


def _rate(count: int, done, t0: float) -> str:
    return f"{count / (done - t0):.0f}" if done else "(not finished)"


def main(argv=None) -> list:
    args = argparse.ArgumentParser()
    args.add_argument("--ids", type=int, default=200000)
    args.add_argument("--trials", type=int, default=20)
    args.add_argument("--timeout", type=int, default=300, help="bound on the flood (seconds)")
    args.add_argument("--log-level", default="info", help="the daemon's log.level")
    args.add_argument("--repo", metavar="DIR", default=REPO,
                      help="run the hbdaemon package found in DIR (another version)")
    opts = args.parse_args(argv)
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt install wrk")
    r = flood(opts)
    before, after = r["before"], r["after"]
    intake = intake_table(r)
    report(f"Flood: {intake[-1][2]} new agent ids in {r['t_end'] - r['t0']:.1f} s, max_agents "
           f"{after['max_agents']}; agents before {before['agents']}, after {after['agents']}; "
           f"errors_by_reason {after['errors_by_reason']}; daemon CPU {r['cpu']:.1f} s "
           f"({r['cpu'] / intake[-1][2] * 1e6:.0f} µs an id)", intake)
    per_agent = (r["rss_after"] - r["rss_before"]) / max(1, after["agents"] - before["agents"])
    bound = after["max_agents"] * per_agent + HEADROOM
    health = health_table(r, bound)
    report("Flood: what keeps working", health)
    print("\nkill -9 -> dead, ms, in trial order (* after the flood): " + ", ".join(
        f"{ms:.1f}{'' if flooding else '*'}" for ms, flooding in r["trials"].results))
    memory = [("agents before", "RSS before MB", "agents after", "RSS after MB",
               "per agent KB", "bound MB (max_agents × per agent + 50 MB)", "peak RSS MB"),
              (before["agents"], f"{r['rss_before'] / 1e6:.1f}", after["agents"],
               f"{r['rss_after'] / 1e6:.1f}", f"{per_agent / 1e3:.2f}", f"{bound / 1e6:.1f}",
               f"{r['rss'].peak(r['t0'], r['t_end']) / 1e6:.1f}")]
    report("Flood: memory", memory)
    reads = [("then GET, one at a time", "document MB", "RSS after MB")] + [
        (path, f"{size / 1e6:.1f}", f"{rss / 1e6:.1f}") for path, size, rss in r["reads"]]
    report(f"Flood: memory with {after['agents']} agents, after reads of the API", reads)
    warnings = sum(1 for line in r["log"] if b" WARNING " in line)
    print(f"\ndaemon log: {len(r['log'])} lines ({warnings} WARNING), "
          f"{sum(len(line) + 1 for line in r['log']) / 1e6:.1f} MB")
    return intake + health + memory + reads


if __name__ == "__main__":
    main()

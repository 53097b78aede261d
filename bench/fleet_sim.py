"""A simulated fleet reporting to one central hbdaemon: CPU, RSS, restart and read API at size.

python bench/fleet_sim.py [--hosts 100000] [--interval 60] [--seconds 30]
                          [--transport http|udp|both] [--repo DIR]

Each simulated host is a downstream hbdaemon whose upstream reporter sends one report
(its own heartbeat with a summary of its agents) per --interval: over HTTP on a new TCP
connection per report, as the reporter does, or as one signed UDP datagram. The fleet is
created first (not measured), then reports arrive at hosts/interval a second for
--seconds while the central daemon's CPU clock is read (exact, all threads). Then the
read API is timed, the daemon is stopped and started again on the same state, and the
time to ready and the RSS after the restart are read (right away and after a second
steady window). --repo runs another checkout's hbdaemon (a before/after comparison).
"""

import argparse
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from common import REPO, cpu_seconds, free_port, get_json, report, rss_bytes, wait_until

SECRET = "fleet-sim-secret-0123456789"


def report_doc(host: int, stamp: str) -> bytes:
    """One host's report, shaped as hbdaemon.upstream sends it."""
    return json.dumps({
        "agent_id": f"host-{host:06d}-hbdaemon", "pid": 1000 + host % 30000, "status": "running",
        "timestamp": stamp, "version": "hbdaemon-1.0.0",
        "summary": {"healthy": 12, "stopped": 1}, "memory": 31457280, "cpu": 0.4,
    }).encode()


def _stamp() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


def _http_new_connection(port: int, payload: bytes) -> bool:
    """One report on its own TCP connection (Connection: close); True on a 2xx."""
    request = (b"POST /heartbeat HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
               b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(payload)
               + payload)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer[9:10] == b"2"


def sender(transport: str, port: int, first: int, count: int, rate: float, seconds: float) -> None:
    """Send reports for hosts first..first+count-1, cycling, at `rate` a second (0: as fast
    as possible, each host once) for `seconds`; print how many were sent and answered."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM) if transport == "udp" else None
    secret = SECRET.encode()
    start = time.monotonic()
    sent = good = 0
    total = count if rate == 0 else int(rate * seconds)
    for n in range(total):
        payload = report_doc(first + n % count, _stamp())
        if udp is not None:
            mac = hmac.new(secret, payload, hashlib.sha256).hexdigest().encode()
            udp.sendto(b"HB1 fleet " + mac + b" " + payload, ("127.0.0.1", port))
            good += 1
        else:
            try:
                good += _http_new_connection(port, payload)
            except OSError:
                pass
        sent += 1
        if rate:
            ahead = sent / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
    print(sent, good)


def send(transport: str, port: int, hosts: int, rate: float = 0, seconds: float = 0,
         procs: int = 1):
    """Run `procs` sender processes over the hosts; (sent, answered)."""
    share = -(-hosts // procs)
    children = []
    for i in range(procs):
        first, count = i * share, min(share, hosts - i * share)
        if count <= 0:
            continue
        children.append(subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--sender", transport, str(port),
             str(first), str(count), str(rate / procs), str(seconds)],
            stdout=subprocess.PIPE, text=True))
    sent = good = 0
    for child in children:
        out, _ = child.communicate(timeout=3600)
        a, b = out.split()
        sent, good = sent + int(a), good + int(b)
    return sent, good


class Central:
    """The central hbdaemon on a state directory that outlives one run of it."""

    def __init__(self, repo: str, hosts: int, interval: float):
        self.repo = repo
        self.tmp = tempfile.mkdtemp(prefix="hbfleet", dir="/tmp")
        self.http_port, self.udp_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        keys = os.path.join(self.tmp, "udp.keys")
        with open(keys, "w") as f:
            f.write(f"fleet {SECRET}\n")
        os.chmod(keys, 0o600)
        cfg = {"daemon": {"state_dir": os.path.join(self.tmp, "state")},
               "log": {"level": "warning"},
               "unix": {"socket_path": os.path.join(self.tmp, "hb.sock"), "socket_group": ""},
               "http": {"host": "127.0.0.1", "port": self.http_port},
               "udp": {"port": self.udp_port, "keys_file": keys},
               "agent": {"max_agents": hosts + 1000, "new_agents_per_minute": 0,
                         "health_check": {"heartbeat_timeout": f"{3 * interval:.0f}s"}}}
        self.config = os.path.join(self.tmp, "hb.yaml")
        with open(self.config, "w") as f:
            json.dump(cfg, f)  # JSON is YAML
        self.proc = None

    def start(self) -> float:
        """Start it; seconds until /healthz answers and the agents are loaded."""
        t0 = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "hbdaemon", "-c", self.config],
                                     cwd=self.repo)
        wait_until(lambda: get_json(self.url + "/healthz"), timeout=120, interval=0.01)
        return time.monotonic() - t0

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)

    def total(self) -> int:
        return get_json(self.url + "/stats")["total_processed"]

    def settle(self, target: int, timeout: float = 120) -> int:
        """Wait until the daemon has processed `target` heartbeats (its queues drained), or
        until it processes no more for 3 s (datagrams lost); how many it processed."""
        deadline = time.monotonic() + timeout
        last, still = -1, time.monotonic()
        while time.monotonic() < deadline:
            done = self.total()
            if done >= target:
                return done
            if done != last:
                last, still = done, time.monotonic()
            elif time.monotonic() - still > 3:
                return done
            time.sleep(0.2)
        raise RuntimeError("the daemon did not settle")

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def timed_get(url: str):
    """(seconds, bytes) of one GET, the whole answer read."""
    t0 = time.monotonic()
    with urllib.request.urlopen(url, timeout=120) as resp:
        size = len(resp.read())
    return time.monotonic() - t0, size


def run(transport: str, opts) -> list:
    rate = opts.hosts / opts.interval
    port_of = {"http": "http_port", "udp": "udp_port"}
    central = Central(opts.repo, opts.hosts, opts.interval)
    try:
        central.start()
        port = getattr(central, port_of[transport])
        # the fleet's first reports create the agents (not measured); UDP at a pace the
        # daemon takes without the socket's buffer overflowing (new agents cost more)
        if transport == "udp":
            sent, _ = send(transport, port, opts.hosts, 4000, opts.hosts / 4000)
        else:
            sent, _ = send(transport, port, opts.hosts, procs=2)
        central.settle(sent)
        agents = get_json(central.url + "/stats")["agents"]
        print(f"{transport}: {agents} agents after the first round", file=sys.stderr)
        done = central.total()
        cpu0 = cpu_seconds(central.proc.pid)
        sent, good = send(transport, port, opts.hosts, rate, opts.seconds)
        taken = central.settle(done + good) - done
        cpu = cpu_seconds(central.proc.pid) - cpu0
        rss = rss_bytes(central.proc.pid)
        agents_s, agents_b = timed_get(central.url + "/agents")
        metrics_s, metrics_b = timed_get(central.url + "/metrics")
        page_s, page_b = timed_get(central.url + "/agents?state=healthy&limit=100")
        central.stop()
        ready = central.start()
        rss_ready = rss_bytes(central.proc.pid)
        done = central.total()
        sent2, good2 = send(transport, port, opts.hosts, rate, opts.seconds)
        central.settle(done + good2)
        rss_after = rss_bytes(central.proc.pid)
    finally:
        central.close()
    return [f"{opts.hosts:,} at {opts.interval:.0f}s over {transport} ({rate:,.0f}/s)",
            f"{cpu / opts.seconds * 100:.1f} % of a core ({cpu / max(1, taken) * 1e6:.0f} µs "
            f"each, {taken / max(1, sent):.1%} taken)", f"{rss / 2**20:.0f} MB",
            f"{ready:.2f} s", f"{rss_ready / 2**20:.0f} MB / {rss_after / 2**20:.0f} MB",
            f"{agents_b / 2**20:.1f} MB, {agents_s:.2f} s",
            f"{page_b / 1024:.1f} kB, {page_s * 1000:.0f} ms",
            f"{metrics_b / 2**20:.1f} MB, {metrics_s:.2f} s"]


def main(argv=None) -> list:
    args = argparse.ArgumentParser()
    args.add_argument("--hosts", type=int, default=100000)
    args.add_argument("--interval", type=float, default=60)
    args.add_argument("--seconds", type=float, default=30)
    args.add_argument("--transport", choices=("http", "udp", "both"), default="both")
    args.add_argument("--repo", default=REPO, help="the checkout whose hbdaemon runs")
    opts = args.parse_args(argv)
    rows = [("hosts", "central daemon CPU", "RSS", "ready after restart",
             "RSS after restart (ready / steady)", "GET /agents", "GET /agents?limit=100",
             "GET /metrics")]
    for transport in (("http", "udp") if opts.transport == "both" else (opts.transport,)):
        rows.append(run(transport, opts))
        print(" | ".join(rows[-1]), file=sys.stderr)
    report(f"Fleet: {opts.hosts:,} hosts reporting every {opts.interval:.0f} s", rows)
    return rows


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--sender":
        t, p, f, c, r, s = sys.argv[2:8]
        sender(t, int(p), int(f), int(c), float(r), float(s))
    else:
        main()

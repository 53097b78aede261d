"""UDP heartbeats: the daemon's CPU per signed datagram, beside a bare floor.

python bench/bench_udp.py [--agents 10000] [--rounds 5] [--rate 5000]
A sender process signs `--agents` distinct heartbeats per round (a new timestamp each
round) and sends them at `--rate` a second to a bare socketserver.UDPServer that only
checks the MAC and parses the JSON (the floor), then to hbdaemon's UDP listener (after a
first round that creates the agents, not measured). CPU is each receiving process's CPU
clock over the run, divided by the datagrams it took.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

from common import REPO, cpu_seconds, free_port, get_json, hbdaemon, report

SECRET = "bench-secret-0123456789"
SENDER = """
import hashlib, hmac, json, os, socket, sys, time
port, agents, first, rounds, rate = (int(a) for a in sys.argv[1:6])
secret = sys.argv[6].encode()
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
base = time.time()
start = time.monotonic()
sent = 0
for r in range(first, first + rounds):
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(base + r)) + ".000Z"
    for n in range(agents):
        payload = json.dumps({"agent_id": f"host-{n}", "pid": 1000 + n, "timestamp": stamp,
                              "status": "running", "cpu": 1.5, "memory": 123456}).encode()
        mac = hmac.new(secret, payload, hashlib.sha256).hexdigest().encode()
        sock.sendto(b"HB1 bench " + mac + b" " + payload, ("127.0.0.1", port))
        sent += 1
        ahead = sent / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
print(sent)
"""
FLOOR = """
import hashlib, hmac, json, socketserver, sys
secret = sys.argv[2].encode()
class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        magic, key, mac, payload = self.request[0].split(b" ", 3)
        good = hmac.compare_digest(hmac.new(secret, payload, hashlib.sha256).hexdigest().encode(), mac)
        json.loads(payload)
server = socketserver.UDPServer(("127.0.0.1", int(sys.argv[1])), Handler)
print("ready", flush=True)
server.serve_forever()
"""


def send(port: int, opts, first: int = 1, rounds: int = 0) -> int:
    out = subprocess.run([sys.executable, "-c", SENDER, str(port), str(opts.agents), str(first),
                          str(rounds or opts.rounds), str(opts.rate), SECRET],
                         capture_output=True, text=True, check=True)
    return int(out.stdout)


def main(argv=None) -> list:
    args = argparse.ArgumentParser()
    args.add_argument("--agents", type=int, default=10000)
    args.add_argument("--rounds", type=int, default=5)
    args.add_argument("--rate", type=int, default=5000)
    opts = args.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="hbu", dir="/tmp")
    keys = os.path.join(tmp, "udp.keys")
    with open(keys, "w") as f:
        f.write(f"bench {SECRET}\n")
    os.chmod(keys, 0o600)
    port = free_port()
    rows = [("receiver", "datagrams sent", "taken", "CPU µs/datagram taken", "× floor")]
    floor_port = free_port()
    floor = subprocess.Popen([sys.executable, "-c", FLOOR, str(floor_port), SECRET],
                             stdout=subprocess.PIPE, text=True)
    floor.stdout.readline()
    cpu0 = cpu_seconds(floor.pid)
    sent = send(floor_port, opts)
    time.sleep(0.5)
    floor_us = (cpu_seconds(floor.pid) - cpu0) / sent * 1e6
    floor.kill()
    floor.wait()
    with hbdaemon(udp={"port": port, "keys_file": keys, "max_skew": "1h"},
                  agent={"max_agents": opts.agents + 10,
                         "new_agents_per_minute": 0}) as (proc, url, _):
        send(port, opts, first=0, rounds=1)  # the agents' first heartbeats: new records
        time.sleep(3)
        before = get_json(url + "/stats")["processed_by_transport"].get("udp", 0)
        cpu0 = cpu_seconds(proc.pid)
        sent = send(port, opts)
        time.sleep(2)
        used = cpu_seconds(proc.pid) - cpu0
        stats = get_json(url + "/stats")
        taken = stats["processed_by_transport"].get("udp", 0) - before
    rows.append(("floor: UDPServer, MAC checked, JSON parsed", sent, sent, f"{floor_us:.1f}",
                 "1.00"))
    rows.append(("hbdaemon", sent, taken, f"{used / max(1, taken) * 1e6:.1f}",
                 f"{used / max(1, taken) * 1e6 / floor_us:.2f}"))
    report(f"UDP heartbeats: {opts.agents} agents x {opts.rounds} rounds at {opts.rate}/s", rows)
    return rows


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    main()

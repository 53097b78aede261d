"""One known agent over HTTP: a heartbeat every INTERVAL seconds on one keep-alive
connection, each answer's status and latency recorded.

python http_probe.py URL AGENT_ID INTERVAL
Prints "ready" after the first answer, then beats until stdin closes and prints one JSON
list of [wall time sent, status (0: no answer), latency ms] per heartbeat.
"""

import http.client
import json
import os
import sys
import threading
import time
import urllib.parse


def main() -> None:
    url, agent_id, interval = sys.argv[1], sys.argv[2], float(sys.argv[3])
    where = urllib.parse.urlsplit(url)
    body = json.dumps({"agent_id": agent_id, "pid": os.getpid(), "version": "1.0.0",
                       "timestamp": "2026-11-27T20:35:24.456284565Z", "status": "running",
                       "cpu": 1.5, "memory": 12582912}).encode()
    headers = {"Content-Type": "application/json"}
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=10)
    beats = []
    next_due = time.monotonic()
    while True:
        sent, started = time.time(), time.perf_counter()
        try:
            conn.request("POST", "/heartbeat", body, headers)
            resp = conn.getresponse()
            resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException):
            conn.close()  # reconnects on the next request
            status = 0
        beats.append((sent, status, (time.perf_counter() - started) * 1000))
        if len(beats) == 1:
            print("ready", flush=True)
        next_due += interval
        now = time.monotonic()
        while next_due < now:  # a late answer skips beats rather than bunching them
            next_due += interval
        if stop.wait(next_due - now):
            break
    conn.close()
    print(json.dumps(beats), flush=True)


if __name__ == "__main__":
    main()

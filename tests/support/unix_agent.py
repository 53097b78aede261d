"""A minimal Unix-socket agent for tests: python unix_agent.py SOCKET AGENT_ID INTERVAL.

Sends one heartbeat line per INTERVAL seconds, prints "sent" after the first, and on
SIGTERM sends a `stopping` heartbeat and exits 0. Uses only the stdlib.
"""

import json
import os
import signal
import socket
import sys
import time


def main() -> int:
    path, agent_id, interval = sys.argv[1], sys.argv[2], float(sys.argv[3])
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(path)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))

    def send(status):
        msg = {"pid": os.getpid(), "status": status, "version": "test-1", "cpu": 1.5,
               "memory": 1024}
        if agent_id != "-":
            msg["agent_id"] = agent_id
        sock.sendall((json.dumps(msg) + "\n").encode())

    send("running")
    print("sent", flush=True)
    while not stopping:
        time.sleep(interval)
        if not stopping:
            send("running")
    send("stopping")
    sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

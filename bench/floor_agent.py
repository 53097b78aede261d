"""The floor for agentd's own beat: a bare loop that re-arms a threading.Timer every
interval and sends one JSON datagram (what any Python heartbeat sender must do at least).

python bench/floor_agent.py INTERVAL PORT
"""

import json
import os
import socket
import sys
import threading
import time


def main() -> None:
    interval, port = float(sys.argv[1]), int(sys.argv[2])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def beat() -> None:
        doc = {"agent_id": "floor", "pid": os.getpid(), "timestamp": time.time(),
               "status": "running"}
        sock.sendto(json.dumps(doc).encode(), ("127.0.0.1", port))
        timer = threading.Timer(interval, beat)
        timer.daemon = True
        timer.start()

    beat()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()

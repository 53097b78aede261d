"""Send N heartbeat lines on one Unix connection as fast as possible.

python unix_client.py SOCKET N AGENT_ID  (waits for a line on stdin before sending)
"""

import json
import os
import socket
import sys


def main() -> None:
    path, count, agent_id = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    line = (json.dumps({"agent_id": agent_id, "pid": os.getpid(),
                        "timestamp": "2026-11-27T20:35:24.456284565Z", "version": "1.0.0",
                        "status": "running", "cpu": 1.5, "memory": 12582912}) + "\n").encode()
    chunk = line * 1000
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    print("connected", flush=True)
    sys.stdin.readline()
    for _ in range(count // 1000):
        sock.sendall(chunk)
    sock.sendall(line * (count % 1000))
    sock.shutdown(socket.SHUT_WR)
    sock.recv(1)  # wait for the server to close
    sock.close()


if __name__ == "__main__":
    main()

"""Send N heartbeat lines on one Unix connection as fast as possible.

python unix_client.py SOCKET N AGENT_ID  (waits for a line on stdin before sending)
python unix_client.py SOCKET N PREFIX --ids K
    N lines cycling over the ids PREFIX-0 .. PREFIX-<K-1> (one agentd speaking for K
    targets), then as with one id.
python unix_client.py SOCKET N PREFIX --new-ids
    N new agent ids PREFIX-0 .. PREFIX-<N-1>, one line each; prints "sent" once the kernel
    took them all, then holds the connection until stdin closes (at EOF the daemon would
    judge every id the connection spoke for).
"""

import json
import os
import socket
import sys


def heartbeat(agent_id: str) -> bytes:
    return (json.dumps({"agent_id": agent_id, "pid": os.getpid(),
                        "timestamp": "2026-11-27T20:35:24.456284565Z", "version": "1.0.0",
                        "status": "running", "cpu": 1.5, "memory": 12582912}) + "\n").encode()


def main() -> None:
    path, count, agent_id = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    new_ids = "--new-ids" in sys.argv[4:]
    if new_ids:
        data = b"".join(heartbeat(f"{agent_id}-{i}") for i in range(count))
    ids = int(sys.argv[sys.argv.index("--ids") + 1]) if "--ids" in sys.argv else 0
    lines = [heartbeat(f"{agent_id}-{i}") for i in range(ids)] if ids else [heartbeat(agent_id)]
    stream = b"".join(lines[i % len(lines)] for i in range(count))  # built before the clock
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    print("connected", flush=True)
    sys.stdin.readline()
    if new_ids:
        sock.sendall(data)
        print("sent", flush=True)
        sys.stdin.read()
        sock.close()
        return
    sock.sendall(stream)
    sock.shutdown(socket.SHUT_WR)
    sock.recv(1)  # wait for the server to close
    sock.close()


if __name__ == "__main__":
    main()

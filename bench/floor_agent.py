"""The floor for agentd's own beat: a bare loop that re-arms a threading.Timer every
interval and sends one heartbeat (what any Python heartbeat sender must do at least).

python bench/floor_agent.py INTERVAL PORT          one JSON datagram to 127.0.0.1:PORT
python bench/floor_agent.py INTERVAL HTTP-URL      one POST on a kept-alive connection,
                                                   its answer read with one recv
"""

import json
import os
import socket
import sys
import threading
import time
from urllib.parse import urlsplit


def main() -> None:
    interval, where = float(sys.argv[1]), sys.argv[2]
    if where.isdigit():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

        def send(body: bytes) -> None:
            sock.sendto(body, ("127.0.0.1", int(where)))
    else:
        url = urlsplit(where)
        sock = socket.create_connection((url.hostname, url.port))

        def send(body: bytes) -> None:
            sock.sendall(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n%s"
                         % (url.path.encode(), url.netloc.encode(), len(body), body))
            sock.recv(65536)

    def beat() -> None:
        doc = {"agent_id": "floor", "pid": os.getpid(), "timestamp": time.time(),
               "status": "running"}
        if not where.isdigit():  # the daemon must accept it, as it does agentd's
            doc["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        send(json.dumps(doc).encode())
        timer = threading.Timer(interval, beat)
        timer.daemon = True
        timer.start()

    beat()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()

"""A flood of new agent ids: python3 flood.py SOCKET PORT UNIX_COUNT HTTP_COUNT.

Run as an unprivileged user by the trust tests. Sends UNIX_COUNT heartbeats with distinct
ids over one Unix connection, and HTTP_COUNT over four pipelined keep-alive connections;
prints a JSON summary (uid, lines sent, HTTP answers by status). Stdlib only: it runs
under the system python3 of any user.
"""

import collections
import json
import os
import socket
import sys
import threading

BATCH = 500


def flood_unix(path: str, count: int) -> int:
    pid = os.getpid()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(path)
        for start in range(0, count, BATCH):
            s.sendall(b"".join(b'{"agent_id":"flood-u-%d","pid":%d}\n' % (i, pid)
                               for i in range(start, min(count, start + BATCH))))
    return count


def flood_http(port: int, first: int, count: int, statuses: collections.Counter,
               lock: threading.Lock) -> None:
    pid = os.getpid()

    def requests(start, end):
        out = []
        for i in range(start, end):
            body = b'{"agent_id":"flood-h-%d","pid":%d}' % (i, pid)
            out.append(b"POST /heartbeat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n"
                       % len(body) + body)
        return b"".join(out)

    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        reader = s.makefile("rb")
        sent = 0
        while sent < count:  # a batch out, its answers in: pipelined, never unbounded
            n = min(BATCH, count - sent)
            s.sendall(requests(first + sent, first + sent + n))
            for _ in range(n):
                status = reader.readline().split(b" ")[1].decode()
                length = 0
                while True:
                    line = reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                reader.read(length)
                with lock:
                    statuses[status] += 1
            sent += n


def main() -> int:
    path, port, unix_count, http_count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
        int(sys.argv[4])
    statuses: collections.Counter = collections.Counter()
    lock = threading.Lock()
    share = http_count // 4
    threads = [threading.Thread(target=flood_http, args=(port, k * share, share, statuses, lock))
               for k in range(4)]
    for t in threads:
        t.start()
    sent = flood_unix(path, unix_count)
    for t in threads:
        t.join(120)
    print(json.dumps({"uid": os.getuid(), "unix_sent": sent, "http": dict(statuses)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

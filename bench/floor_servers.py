"""The floor of this design: stdlib servers that only parse JSON and answer.

python bench/floor_servers.py http PORT   |   python bench/floor_servers.py unix PATH
FLOOR_FIXED=1: the HTTP floor answers one fixed body (no time formatted per answer).
"""

import http.server
import json
import os
import threading
from datetime import datetime, timezone
import socketserver
import sys


FIXED = b'{"success": true, "message": "heartbeat accepted"}'


class FloorHTTPHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = -1  # one send per response, as in hbdaemon (no Nagle stall)

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        json.loads(body)
        if os.environ.get("FLOOR_FIXED"):
            reply = FIXED
        else:  # the least a protocol answer can be: the three fields, the time formatted
            reply = json.dumps({"success": True, "message": "heartbeat accepted",
                                "timestamp": datetime.now(timezone.utc).isoformat()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


class FloorUnixHandler(socketserver.StreamRequestHandler):
    def handle(self):
        n = 0
        for line in self.rfile:
            json.loads(line)
            n += 1
        with self.server.lock:  # at EOF: publish the running total for the benchmark
            self.server.count += n
            with open(os.environ["FLOOR_COUNT_FILE"], "w") as f:
                f.write(str(self.server.count))


class FloorUnixServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    count = 0
    lock = threading.Lock()


def main() -> None:
    kind, where = sys.argv[1], sys.argv[2]
    if kind == "http":
        server = http.server.ThreadingHTTPServer(("127.0.0.1", int(where)), FloorHTTPHandler)
        server.daemon_threads = True
    else:
        server = FloorUnixServer(where, FloorUnixHandler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

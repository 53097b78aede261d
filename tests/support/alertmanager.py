"""A webhook receiver that records what it is sent, and a real Prometheus Alertmanager
(Debian's prometheus-alertmanager) on loopback ports, routing to such a receiver."""

import json
import os
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

from support.daemon import free_port
from support.tools import require_tool
from support.wait import wait_for


class Receiver:
    """POSTs recorded as (monotonic arrival, path, headers, raw body, parsed JSON).
    `mode`: "ok" (200), "fail" (500), "hang" (never answers until closed)."""

    def __init__(self, mode: str = "ok"):
        self.mode = mode
        self.posts = []
        self.arrivals = []
        self._closing = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                arrived = time.monotonic()
                receiver.arrivals.append((arrived, self.path))  # a hung one's too
                if receiver.mode == "hang":
                    receiver._closing.wait(60)
                    return
                try:
                    doc = json.loads(raw)
                except ValueError:
                    doc = None
                receiver.posts.append((arrived, self.path, dict(self.headers), raw, doc))
                self.send_response(500 if receiver.mode == "fail" else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def docs(self, path: str = None) -> list:
        return [doc for _, p, _, _, doc in list(self.posts) if path is None or p == path]

    def close(self):
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()


def am_alerts(notification: dict) -> list:
    """(status, agent_id) of each alert in an Alertmanager webhook notification."""
    return [(a["status"], a["labels"].get("agent_id")) for a in notification.get("alerts", [])]


class Alertmanager:
    """prometheus-alertmanager on 127.0.0.1, no clustering, routing every alert to
    `receiver_url` at once (group_wait 0s, group_interval 1s)."""

    def __init__(self, tmp: str, receiver_url: str, extra_route: dict = None,
                 inhibit_rules: list = ()):
        self.binary = require_tool("prometheus-alertmanager", "prometheus-alertmanager")
        self.dir = os.path.join(tmp, f"am-{free_port()}")
        os.makedirs(self.dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        route = {"receiver": "test", "group_by": ["agent_id"], "group_wait": "0s",
                 "group_interval": "1s", "repeat_interval": "1h"}
        route.update(extra_route or {})
        config = {"route": route, "receivers": [{"name": "test", "webhook_configs": [
            {"url": receiver_url + "/am", "send_resolved": True}]}],
                  "inhibit_rules": list(inhibit_rules)}
        self.config_path = os.path.join(self.dir, "alertmanager.yml")
        with open(self.config_path, "w") as f:
            yaml.safe_dump(config, f)
        self.log_path = os.path.join(self.dir, "alertmanager.log")
        self.proc = None

    def start(self) -> "Alertmanager":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, f"--config.file={self.config_path}",
                 f"--storage.path={self.dir}/data", f"--web.listen-address=127.0.0.1:{self.port}",
                 "--cluster.listen-address=", "--log.level=warn"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        wait_for(self.ready, 20, what="alertmanager to be ready")
        return self

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"alertmanager exited {self.proc.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=5) as resp:
            return json.loads(resp.read())

    def alerts(self) -> list:
        return self.get("/api/v2/alerts")

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

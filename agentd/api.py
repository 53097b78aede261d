"""The agent's own status API: the Go agent's routes on a small socketserver.

GET /health, POST /reload, GET /status, GET /metrics (Prometheus text, or JSON when the
client asks for application/json). One request per connection. http.server is not used:
it would cost the agent ~7 MB of its ~20 MB.
"""

import json
import logging
import socket
import socketserver
import threading
import time
from typing import Callable, Tuple

from agentd.protocol import format_rfc3339

log = logging.getLogger(__name__)

MAX_LINE = 8192
MAX_HEADERS = 100
MAX_BODY = 64 * 1024
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           413: "Payload Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
JSON = "application/json"


class StatusApiServer(socketserver.ThreadingTCPServer):
    """Listens on the agent's API address; `agent` answers, `reload` re-reads the config."""

    daemon_threads = True     # a slow client must never delay exit
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, host: str, port: int, agent, reload: Callable[[], Tuple[bool, str]]):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.agent, self.reload = agent, reload
        super().__init__((host, port), StatusApiHandler)

    def stop(self, timeout: float = 2.0) -> None:
        """shutdown() with a nudge: serve_forever polls rarely (idle CPU), so wake it up."""
        stopper = threading.Thread(target=self.shutdown, name="agentd-api-stop", daemon=True)
        stopper.start()
        deadline = time.monotonic() + timeout
        while stopper.is_alive() and time.monotonic() < deadline:
            try:
                socket.create_connection(self.server_address[:2], timeout=0.5).close()
            except OSError:
                pass
            stopper.join(0.05)
        self.server_close()
        if stopper.is_alive():
            log.warning("status API did not stop within %.1fs", timeout)

    def handle_error(self, request, client_address):
        log.exception("status API: error serving %s", client_address)


class StatusApiHandler(socketserver.StreamRequestHandler):
    """Reads one request, answers it, closes."""

    timeout = 5.0  # a client that sends nothing is dropped

    def handle(self):
        try:
            method, path, headers = self._read_request()
        except ValueError as exc:
            return self._send(400, JSON, {"success": False, "message": str(exc)})
        except OSError:
            return
        code, ctype, doc = route(self.server.agent, self.server.reload, method, path, headers)
        self._send(code, ctype, doc)

    def _read_request(self):
        line = self.rfile.readline(MAX_LINE + 1)
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise ValueError("bad request line")
        headers = {}
        for _ in range(MAX_HEADERS):
            raw = self.rfile.readline(MAX_LINE + 1)
            if raw in (b"\r\n", b"\n", b""):
                break
            name, sep, value = raw.decode("latin-1").partition(":")
            if not sep:
                raise ValueError("bad header line")
            headers[name.strip().lower()] = value.strip()
        else:
            raise ValueError("too many headers")
        length = headers.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY:
            raise ValueError("bad Content-Length")
        self.rfile.read(int(length))
        return parts[0], parts[1].split("?", 1)[0], headers

    def _send(self, code: int, ctype: str, doc) -> None:
        body = doc.encode() if isinstance(doc, str) else json.dumps(doc).encode()
        head = (f"HTTP/1.1 {code} {REASONS.get(code, '')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        try:
            self.wfile.write(head + body)
        except OSError:
            pass


def route(agent, reload, method: str, path: str, headers: dict):
    """(status, content type, document) for one request."""
    routes = {"/health": "GET", "/status": "GET", "/metrics": "GET", "/reload": "POST"}
    if path not in routes:
        return 404, JSON, {"success": False, "message": f"no such path: {path}"}
    if method != routes[path]:
        return 405, JSON, {"success": False, "message": f"use {routes[path]} for {path}"}
    stats = agent.stats
    if path == "/health":
        healthy = stats.healthy(agent.cfg.heartbeat.interval)
        snap = stats.snapshot()
        return (200 if healthy else 503), JSON, {
            "status": "healthy" if healthy else "unhealthy", "uptime": snap["uptime"],
            "last_heartbeat": snap["last_heartbeat"], "agent_id": snap["agent_id"]}
    if path == "/status":
        return 200, JSON, stats.snapshot()
    if path == "/reload":
        ok, message = reload()
        return (200 if ok else 500), JSON, {"success": ok, "message": message,
                                            "reloaded_at": format_rfc3339(time.time())}
    if "application/json" in headers.get("accept", ""):
        return 200, JSON, stats.snapshot()
    return 200, METRICS_TYPE, prometheus(stats.snapshot())


def prometheus(snap: dict) -> str:
    """The /status numbers in Prometheus text format (agentd_ prefix, base units)."""
    labels = f'{{agent_id="{snap["agent_id"]}"}}'
    families = [
        ("agentd_heartbeats_total", "counter", "Heartbeats the daemon accepted.", snap["heartbeat_count"]),
        ("agentd_heartbeat_failures_total", "counter", "Heartbeats that did not get through.",
         snap["heartbeat_failures"]),
        ("agentd_consecutive_failures", "gauge", "Failures since the last success.",
         snap["consecutive_failures"]),
        ("agentd_connected", "gauge", "1 while the daemon is reachable.", int(snap["connected"])),
        ("agentd_uptime_seconds", "gauge", "Seconds since the agent started.", snap["uptime"]),
        ("agentd_cpu_ratio", "gauge", "This process's CPU use as a fraction of the machine.",
         snap["cpu_percent"] / 100.0),
        ("agentd_memory_bytes", "gauge", "This process's resident memory.", snap["memory_bytes"]),
    ]
    lines = []
    for name, kind, text, value in families:
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name}{labels} {value}"]
    return "\n".join(lines) + "\n"

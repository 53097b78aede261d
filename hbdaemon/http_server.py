"""The HTTP server: heartbeat intake (POST /heartbeat) and the daemon's API."""

import hmac
import http.server
import json
import logging
import queue
import socket
import struct
import time
from typing import Optional
from urllib.parse import parse_qs, unquote, urlsplit

from hbdaemon import __version__
from hbdaemon.api import Api, ApiError
from hbdaemon.connlimit import ConnectionLimitMixIn
from hbdaemon.protocol import MAX_MESSAGE_BYTES, ProtocolError, format_rfc3339, parse_heartbeat
from hbdaemon.workers import PoolClosed

log = logging.getLogger(__name__)

TRANSPORT = "http"
# the status page loads nothing from elsewhere and only talks to this daemon
_PAGE_HEADERS = (("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; "
                  "style-src 'unsafe-inline'; connect-src 'self'; img-src data:"),
                 ("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-store"))


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and their IPv4-mapped form: a client on this host."""
    return host.startswith("127.") or host in ("::1", "::ffff:127.0.0.1") \
        or host.startswith("::ffff:127.")


class HeartbeatHTTPServer(ConnectionLimitMixIn, http.server.ThreadingHTTPServer):
    """ThreadingHTTPServer with keep-alive, a connection cap and the daemon's API."""

    daemon_threads = True     # idle keep-alive connections must not delay exit
    block_on_close = False    # stop() closes connections itself, with a bound
    request_queue_size = 256  # listen backlog for bursts of new agents

    def __init__(self, host: str, port: int, api: Api, submit, *, token: Optional[bytes] = None,
                 idle_timeout: float = 30.0, max_connections: int = 256):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.api = api
        self.submit = submit
        self.token = token
        self.idle_timeout = idle_timeout
        self.init_connection_limit(max_connections)
        super().__init__((host, port), HeartbeatHTTPHandler)

    def refuse_connection(self, request) -> None:
        body = _json_body(False, "too many connections; try again shortly")
        request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                        b"Retry-After: 1\r\nConnection: close\r\nContent-Length: "
                        + str(len(body)).encode() + b"\r\n\r\n" + body)

    def close(self) -> None:
        """Stop listening and end the open connections."""
        self.server_close()
        self.close_connections()


def _too_long(digits: str) -> bool:
    # compare lengths first: int() of thousands of digits is slow, and refused past 4300
    return len(digits.lstrip("0")) > 6 or int(digits) > MAX_MESSAGE_BYTES


def _timeval(seconds: float) -> bytes:
    return struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))


def _json_body(success: bool, message: str) -> bytes:
    return json.dumps({"success": success, "message": message,
                       "timestamp": format_rfc3339(time.time())}).encode()


_accepted_cache = [0, b""]
_date_cache = [0, ""]


def _accepted_body() -> bytes:
    """The 200 answer, rebuilt at most once a millisecond (it is on the hot path)."""
    now = time.time()
    millis = int(now * 1000)
    if _accepted_cache[0] != millis:
        _accepted_cache[:] = [millis, _json_body(True, "heartbeat accepted")]
    return _accepted_cache[1]


class HeartbeatHTTPHandler(http.server.BaseHTTPRequestHandler):
    """One keep-alive connection: heartbeats in, API documents out."""

    protocol_version = "HTTP/1.1"  # keep-alive: an agent reuses one connection
    wbufsize = -1                  # headers and body leave in one send (no Nagle stall)
    server_version = f"hbdaemon/{__version__}"
    sys_version = ""

    def setup(self):
        # Kernel-side timeouts (SO_RCVTIMEO/SO_SNDTIMEO) instead of settimeout(): the socket
        # stays blocking, so each read is one syscall, not three; a timed-out read then
        # looks like EOF and the connection is closed.
        timeout = _timeval(self.server.idle_timeout)
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeout)
        super().setup()

    # -- intake ---------------------------------------------------------------------------

    def do_POST(self):
        path = urlsplit(self.path).path
        if path != "/heartbeat":
            return self._route_other("POST", path)
        server = self.server
        started = time.perf_counter()
        server.api.stats.note_received(TRANSPORT)
        if not self._authorized():
            return
        length = self._content_length()
        if length is None:
            return
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            return self._reject(400, "incomplete_body", "body shorter than Content-Length")
        try:
            hb = parse_heartbeat(body, require_agent_id=True)
        except ProtocolError as exc:
            return self._reject(400, exc.reason, str(exc))
        host = self.client_address[0] if self.client_address else ""
        try:
            server.submit((hb, started, host, is_loopback(host)))
        except queue.Full:
            return self._reject(503, "queue_full", "queue full; retry later",
                                close=False, retry_after=True)
        except PoolClosed:
            return self._reject(503, "shutting_down", "daemon is shutting down",
                                retry_after=True)
        self._reply(200, _accepted_body())

    def handle_expect_100(self):
        # Refuse an oversized body before the client sends it.
        length = self.headers.get("Content-Length", "").strip()
        if length.isdigit() and _too_long(length):
            self.server.api.stats.note_received(TRANSPORT)
            self._too_large()
            return False
        return super().handle_expect_100()

    def _authorized(self) -> bool:
        token = self.server.token
        if token is None:
            return True
        given = self.headers.get("Authorization", "")
        if given[:7].lower() == "bearer " and hmac.compare_digest(given[7:].strip().encode(), token):
            return True
        self._reject(401, "unauthorized", "missing or wrong bearer token",
                     headers=(("WWW-Authenticate", 'Bearer realm="hbdaemon"'),))
        return False

    def _content_length(self) -> Optional[int]:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._reject(411, "no_length", "send the body with Content-Length, not chunked")
            return None
        text = self.headers.get("Content-Length")
        if text is None:
            self._reject(411, "no_length", "Content-Length required")
            return None
        if not text.strip().isdigit():
            self.close_connection = True
            self._reject(400, "bad_length", "Content-Length is not a number")
            return None
        if _too_long(text.strip()):
            self._too_large()
            return None
        return int(text)

    def _too_large(self) -> None:
        self.close_connection = True  # the body stays unread: this connection is done
        self._reject(413, "too_large", f"body larger than {MAX_MESSAGE_BYTES} bytes")

    def _reject(self, code: int, reason: str, message: str, close: bool = False,
                retry_after: bool = False, headers=()) -> None:
        self.server.api.stats.note_rejected(TRANSPORT, reason)
        if close:
            self.close_connection = True
        extra = tuple(headers) + ((("Retry-After", "1"),) if retry_after else ())
        self._reply(code, _json_body(False, message), headers=extra)

    # -- API ------------------------------------------------------------------------------

    def do_GET(self):
        parts = urlsplit(self.path)
        self._route_other("GET", parts.path, parse_qs(parts.query))

    def do_DELETE(self):
        path = urlsplit(self.path).path
        if path.startswith("/agents/") and not self._authorized():
            return
        self._route_other("DELETE", path)

    def do_PUT(self):
        self._route_other("PUT", urlsplit(self.path).path)

    do_PATCH = do_PUT

    def _route_other(self, method: str, path: str, query: Optional[dict] = None) -> None:
        try:
            code, doc, content_type = self.server.api.handle(method, unquote(path), query or {})
        except ApiError as exc:
            headers = (("Allow", exc.allow),) if exc.allow else ()
            return self._reply(exc.code, _json_body(False, exc.message), headers=headers)
        body = doc.encode() if isinstance(doc, str) else json.dumps(doc).encode()
        headers = _PAGE_HEADERS if content_type.startswith("text/html") else ()
        self._reply(code, body, content_type, headers=headers)

    def _reply(self, code: int, body: bytes, content_type: str = "application/json",
               headers=()) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def date_time_string(self, timestamp=None):
        # The Date header, formatted once a second rather than once a request.
        if timestamp is not None:
            return super().date_time_string(timestamp)
        now = int(time.time())
        if _date_cache[0] != now:
            _date_cache[:] = [now, super().date_time_string(now)]
        return _date_cache[1]

    def log_request(self, code="-", size="-"):
        if log.isEnabledFor(logging.DEBUG):
            super().log_request(code, size)

    def log_message(self, format, *args):
        log.debug("http %s: " + format, self.client_address[0] if self.client_address else "-",
                  *args)


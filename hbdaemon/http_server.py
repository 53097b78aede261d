"""The HTTP server: one request boundary for heartbeat intake (POST /heartbeat) and the API.

Every request goes through HeartbeatHTTPHandler.handle_one_request: the target is decoded
once, the Host and Origin checked, the route and its credential rule looked up in
api.ROUTES, and the body read (within MAX_MESSAGE_BYTES) or the connection closed, so a
body is never read as the next request.
"""

import http.client
import http.server
import ipaddress
import json
import logging
import queue
import socket
import ssl
import struct
import time
from typing import Callable, Optional, Tuple

from hbdaemon import __version__
from hbdaemon.api import JSON, NETWORK_BOUND, Api, ApiError, Body, Stream, resolve
from hbdaemon.auth import OPEN, Credentials, Grant
from hbdaemon.connlimit import (NEW_ID_SLOTS, NO_GATE, ConnectionLimitMixIn, FairGate,
                                ReusedThreadsMixIn)
from hbdaemon.http_request import (BadRequest, PlainHead, is_loopback_address,
                                   is_loopback_host, parse_plain_head, parse_target, same_origin)
from hbdaemon.protocol import (MAX_MESSAGE_BYTES, ProtocolError, format_rfc3339,
                               parse_heartbeat, warning_reason)
from hbdaemon.registry import ID_CONFLICT, MAX_AGENTS, RELAYED, RESERVED_ID
from hbdaemon.workers import PoolClosed

log = logging.getLogger(__name__)

TRANSPORT = "http"
MAX_REQUEST_LINE = 8192   # longer: 414
MAX_HEAD_BYTES = 16384    # all header lines together; more: 431 (memory per connection)
SUBMIT_WAIT = 2.0         # seconds a known agent's heartbeat waits for room in the queue
HANDSHAKE_TIMEOUT = 10.0  # seconds a TLS client has to finish its handshake
# the status page loads nothing from elsewhere and only talks to this daemon
_PAGE_HEADERS = (("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; "
                  "style-src 'unsafe-inline'; connect-src 'self'; img-src data:"),
                 ("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-store"))


class HeartbeatHTTPServer(ConnectionLimitMixIn, ReusedThreadsMixIn,
                          http.server.ThreadingHTTPServer):
    """ThreadingHTTPServer with keep-alive, a connection cap, threads reused from one
    connection to the next, and the daemon's API."""

    daemon_threads = True     # idle keep-alive connections must not delay exit
    block_on_close = False    # stop() closes connections itself, with a bound
    request_queue_size = 256  # listen backlog for bursts of new agents
    evict_waiting = True      # at the cap, the longest-waiting connection makes room

    def __init__(self, host: str, port: int, api: Api, submit, *,
                 credentials: Optional[Credentials] = None, idle_timeout: float = 30.0,
                 max_connections: int = 256,
                 wait_room: Callable[[bool, float], bool] = lambda new, timeout: True,
                 gate: Optional[FairGate] = None, tls: Optional[ssl.SSLContext] = None):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.api = api
        self.submit = submit
        self.wait_room = wait_room  # (new, timeout): a place in that share of the queue?
        self.credentials = credentials or Credentials()
        self.idle_timeout = idle_timeout
        self.init_connection_limit(max_connections)
        self.init_reused_threads()
        self.gate = gate or FairGate(NEW_ID_SLOTS)
        self.tls = tls  # set: HTTPS only (replaced on SIGHUP: a renewed certificate)
        super().__init__((host, port), HeartbeatHTTPHandler)
        # DNS rebinding: a page whose name resolves to 127.0.0.1 must not reach the API
        self.loopback_only = ipaddress.ip_address(self.server_address[0]).is_loopback

    def refuse_connection(self, request) -> None:
        body = _json_body(False, "too many connections; try again shortly")
        request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                        b"Retry-After: 1\r\nConnection: close\r\nContent-Length: "
                        + str(len(body)).encode() + b"\r\n\r\n" + body)

    def close(self) -> None:
        """Stop listening and end the open connections."""
        self.server_close()
        self.close_connections()


def _timeval(seconds: float) -> bytes:
    return struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))


def _json_body(success: bool, message: str, **extra) -> bytes:
    return json.dumps({"success": success, "message": message,
                       "timestamp": format_rfc3339(time.time()), **extra}).encode()


_accepted_cache = [0, b""]
_date_cache = [0, ""]


class TlsRefused(ConnectionError):
    """A connection that did not complete a TLS handshake: closed without an answer."""


class Refusal(Exception):
    """A request answered with an error: status, counted reason, message, extra headers."""

    def __init__(self, code: int, reason: str, message: str, headers=(), log_it: bool = False):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.headers, self.log_it = tuple(headers), log_it


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
        self._tracked = self.request  # the connection as the server counts it
        tls = self.server.tls
        if tls is not None:
            # Python's TLS on a blocking socket waits for ever when a kernel timeout fires,
            # so a TLS connection takes Python's own timeouts: the handshake's first, here
            # on this connection's thread, then the idle one
            self.request.settimeout(min(HANDSHAKE_TIMEOUT, self.server.idle_timeout))
            try:
                self.request = tls.wrap_socket(self.request, server_side=True,
                                               do_handshake_on_connect=False)
                self.server.use_socket(self._tracked, self.request)  # evictable meanwhile
                self.request.do_handshake()
            except (ssl.SSLError, OSError) as exc:  # plain HTTP, a scanner, a slow client
                self.server.api.stats.note_refused("tls_handshake")
                raise TlsRefused(str(exc)) from None
            self.request.settimeout(self.server.idle_timeout)
        else:
            timeout = _timeval(self.server.idle_timeout)
            self.request.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)
            self.request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeout)
        super().setup()
        self._known = False  # the last request was a heartbeat of a known agent, accepted

    # -- the request boundary -------------------------------------------------------------

    def handle_one_request(self):
        """Read one request and answer it; every method goes through the route table."""
        self.command, self.request_version, self._continue = "", "HTTP/1.1", False
        self._length: Optional[int] = 0
        self._heartbeat = False  # the request is for POST /heartbeat: count it as intake
        self.server.note_waiting(self._tracked)
        line = self.rfile.readline(MAX_REQUEST_LINE + 1)
        if not line:
            self.close_connection = True
            return
        if len(line) > MAX_REQUEST_LINE:
            self.requestline = ""
            self.send_error(414)
            return
        self.raw_requestline = line
        self.server.api.registry.yield_to_verdicts()
        if not self._parse_head():  # a refusal is answered through send_error
            return
        try:
            self._serve()
        except Refusal as refusal:
            self._refuse(refusal)
        self.wfile.flush()

    def _parse_head(self) -> bool:
        """parse_request within MAX_HEAD_BYTES: directly when the whole head has arrived
        already (the usual case: one packet), else through a reader that counts."""
        ahead = self.rfile.peek(MAX_HEAD_BYTES)[:MAX_HEAD_BYTES]
        plain = parse_plain_head(self.raw_requestline, ahead)
        if plain is not None:
            return self._take_plain_head(plain)
        if ahead.startswith((b"\r\n", b"\n")) or b"\n\r\n" in ahead or b"\n\n" in ahead:
            return self.parse_request()
        stream, self.rfile = self.rfile, _HeadReader(self.rfile, MAX_HEAD_BYTES)
        try:
            return self.parse_request()
        finally:
            self.rfile = stream

    def _take_plain_head(self, plain: PlainHead) -> bool:
        """parse_request's outcome for a plain head (see parse_plain_head), the same
        attributes set the same way."""
        self.requestline = self.raw_requestline.decode("ascii").rstrip("\r\n")
        self.command, self.path, self.request_version = plain.command, plain.path, plain.version
        self.headers = plain.headers
        self.rfile.read(plain.size)
        self.close_connection = plain.version != "HTTP/1.1"
        connection = plain.headers.get("Connection", "").lower()
        if connection == "close":
            self.close_connection = True
        elif connection == "keep-alive":
            self.close_connection = False
        if plain.version == "HTTP/1.1" and \
                plain.headers.get("Expect", "").lower() == "100-continue":
            return self.handle_expect_100()
        return True

    def handle_expect_100(self):
        # Send "100 Continue" only once the request is known to be acceptable (_read_body).
        self._continue = True
        return True

    def send_error(self, code, message=None, explain=None):
        """Errors found by http.server itself (request line, headers, version): JSON, close."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # what parse_request assumes before it knows
            self.request_version = "HTTP/1.1"
        words = message or self.responses.get(code, ("error",))[0]
        self._reply(code, _json_body(False, words))
        self.server.api.stats.note_refused("bad_request", f"http: refused a request from "
                                           f"{self._client()}: {code} {words}")

    def _serve(self) -> None:
        server = self.server
        if self.request_version == "HTTP/0.9":  # a bare "GET /path": no headers, no framing
            self.request_version = "HTTP/1.1"
            self.close_connection = True
            raise Refusal(400, "bad_request", "HTTP/0.9 requests are not served")
        if self.headers.defects or self.headers.get_payload():
            # the email parser stops at a malformed line (or a bare CR) and keeps the rest
            # as "payload": the headers after it (Content-Length, Host, Origin) go unseen
            self.close_connection = True
            raise Refusal(400, "bad_header", "malformed header line")
        self._length = self._framing()
        try:
            target = parse_target(self.path)
        except BadRequest as exc:
            raise Refusal(400, "bad_target", str(exc)) from None
        self._check_host(target.authority)
        try:
            route, agent_id = resolve(self.command, target.path)
        except ApiError as exc:
            raise Refusal(exc.code, "not_found" if exc.code == 404 else "bad_method", exc.message,
                          (("Allow", exc.allow),) if exc.allow else ()) from None
        heartbeat = self._heartbeat = route.action == "heartbeat"
        if heartbeat:
            server.api.stats.note_received(TRANSPORT)
        if route.method in ("POST", "DELETE") and not self._same_origin():
            raise Refusal(403, "foreign_origin", "requests from web pages of another origin "
                          "are refused", log_it=True)
        grant = OPEN
        if route.credential and server.credentials.required:
            grant = server.credentials.check(self.headers.get("Authorization"))
            if grant is None:
                raise Refusal(401, "unauthorized", "missing or wrong bearer token",
                              (("WWW-Authenticate", 'Bearer realm="hbdaemon"'),), log_it=True)
            if route.path.startswith("/silences"):
                if grant.globs is not None:  # silences reach every agent: the full token only
                    raise Refusal(403, "not_permitted", f"{grant.name} speaks for some agents "
                                  "only; silences need the http.auth_token_file token",
                                  log_it=True)
            elif agent_id is not None and not grant.covers(agent_id):
                raise self._not_covered(grant, agent_id)
        if heartbeat and self._length is None:
            raise Refusal(411, "no_length", "Content-Length required")
        body = self._read_body()
        server.note_busy(self._tracked)  # the request is in: not one to evict
        # the gate (see Daemon.gate) is held for work only, never while the client is waited
        # for: the request is read before it, and every answer is written after it
        # a heartbeat on a connection whose last one was a known agent's skips it
        known, self._known = self._known, False
        if heartbeat and not known:  # maybe a new agent: it waits for a place in the new
            server.wait_room(True, SUBMIT_WAIT)  # agents' share here, outside the gate
        # silences wait on Alertmanager, not on the interpreter: outside the gate, so that a
        # hung Alertmanager cannot hold the new-id gate's few places
        gated = not (known and heartbeat) and route.action not in NETWORK_BOUND
        with (server.gate if gated else NO_GATE):
            if heartbeat:
                warnings = self._intake(body, grant, gated)
            else:
                try:
                    code, doc, content_type = server.api.handle(
                        route, agent_id, target.query, by=f"{route.method} from {self._client()}",
                        body=body)
                except ApiError as exc:
                    code, doc, content_type = exc.code, _json_body(False, exc.message), JSON
                if isinstance(doc, str):
                    doc = doc.encode()
                body = doc if isinstance(doc, (bytes, Stream)) else json.dumps(doc).encode()
        if heartbeat:
            return self._accepted(warnings)
        headers = _PAGE_HEADERS if content_type.startswith("text/html") else ()
        self._reply(code, body, content_type, headers=headers)

    def _framing(self) -> Optional[int]:
        """The body's length (None: no Content-Length); refuses what cannot be framed safely."""
        if self.headers.get("Transfer-Encoding") is not None:
            self.close_connection = True
            raise Refusal(411, "no_length", "send the body with Content-Length, not chunked")
        values = self.headers.get_all("Content-Length") or []
        if not values:
            return None
        text = values[0].strip()
        # ASCII digits only: "²".isdigit() is True, and int() of it raises
        if len(values) > 1 or not (text.isascii() and text.isdigit()):
            self.close_connection = True
            raise Refusal(400, "bad_length", "Content-Length is not one whole number")
        # compare lengths first: int() of thousands of digits is slow, and refused past 4300
        if len(text.lstrip("0")) > 6 or int(text) > MAX_MESSAGE_BYTES:
            self.close_connection = True  # the body stays unread: this connection is done
            raise Refusal(413, "too_large", f"body larger than {MAX_MESSAGE_BYTES} bytes")
        return int(text)

    def _read_body(self) -> bytes:
        if not self._length:
            return b""
        if self._continue:
            self._continue = False
            self.send_response_only(100)
            self.end_headers()
            self.wfile.flush()
        expected, self._length = self._length, 0
        body = self.rfile.read(expected)
        if len(body) < expected:
            self.close_connection = True
            raise Refusal(400, "incomplete_body", "body shorter than Content-Length")
        return body

    def _check_host(self, authority: Optional[str]) -> None:
        """421 for a name that is not loopback while we listen on loopback (DNS rebinding)."""
        if not self.server.loopback_only:
            return
        hosts = self.headers.get_all("Host") or []
        if len(hosts) > 1:
            self.close_connection = True
            raise Refusal(400, "bad_host", "more than one Host header")
        host = authority if authority is not None else (hosts[0] if hosts else None)
        if host is not None and not is_loopback_host(host):
            raise Refusal(421, "bad_host", "this daemon answers only to localhost and loopback "
                          "addresses", log_it=True)

    def _same_origin(self) -> bool:
        origin = self.headers.get("Origin")
        return origin is None or same_origin(origin, self.headers.get("Host"))

    def _not_covered(self, grant: Grant, agent_id: str) -> Refusal:
        return Refusal(403, "not_permitted", f"{grant.name} does not speak for agent {agent_id}",
                       log_it=True)

    # -- intake ---------------------------------------------------------------------------

    def _intake(self, body: bytes, grant: Grant, gated: bool) -> Tuple[str, ...]:
        """Check and queue one heartbeat; its warnings. Raises Refusal. `gated`: this runs
        in the gate (and so must not wait for a place in the queue)."""
        started = time.perf_counter()
        server = self.server
        stats = server.api.stats
        try:
            hb = parse_heartbeat(body, require_agent_id=True)
        except ProtocolError as exc:
            raise Refusal(400, exc.reason, str(exc)) from None
        if not grant.covers(hb.agent_id):
            raise self._not_covered(grant, hb.agent_id)
        host = self._client()
        known = hb.agent_id in server.api.registry
        refusal = server.api.registry.admit(hb.agent_id, host)
        if refusal == ID_CONFLICT:
            raise Refusal(409, refusal, f"agent {hb.agent_id} is held by a live Unix connection; "
                          "its heartbeats come from there", log_it=True)
        if refusal == RELAYED:
            raise Refusal(409, refusal, f"agent {hb.agent_id} is relayed by a downstream "
                          "daemon; its heartbeats go there", log_it=True)
        if refusal == RESERVED_ID:
            raise Refusal(403, refusal, f"{hb.agent_id} is this daemon's own id "
                          "(manager.agent_id): no agent may take it", log_it=True)
        if refusal is not None:
            retry = "60" if refusal == MAX_AGENTS else "5"
            raise Refusal(429, refusal, "too many agents" if refusal == MAX_AGENTS else
                          "too many new agent ids from this address; try again shortly",
                          (("Retry-After", retry),), log_it=True)
        try:  # outside the gate a heartbeat waits a moment for a place (the client feels
            # the pushback); one that holds a place in the gate does not
            server.submit((hb, started, host, is_loopback_address(host)),
                          0.0 if gated else SUBMIT_WAIT, new=not known)
        except queue.Full:
            raise Refusal(503, "queue_full", "queue full; retry later" if known else
                          "busy; new agents wait while known ones are heard",
                          (("Retry-After", "1"),)) from None
        except PoolClosed:
            self.close_connection = True
            raise Refusal(503, "shutting_down", "daemon is shutting down",
                          (("Retry-After", "1"),)) from None
        self._known = known
        for warning in hb.warnings:
            stats.note_warning(TRANSPORT, warning_reason(warning))
        return hb.warnings

    def _accepted(self, warnings: Tuple[str, ...]) -> None:
        """The 200 for an accepted heartbeat."""
        if warnings or self.close_connection:
            extra = {"warnings": list(warnings)} if warnings else {}
            return self._reply(200, _json_body(True, "heartbeat accepted", **extra))
        self.log_request(200)
        self.wfile.write(self._accepted_reply())

    def _accepted_reply(self) -> bytes:
        """The whole usual 200 answer, head and body, as _reply would send it; rebuilt at
        most once a millisecond (the body's timestamp), as it is most of what we send."""
        millis = int(time.time() * 1000)
        if _accepted_cache[0] != millis:
            body = _json_body(True, "heartbeat accepted")
            head = (f"{self.protocol_version} 200 OK\r\nServer: {self.version_string()}\r\n"
                    f"Date: {self.date_time_string()}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n")
            _accepted_cache[:] = [millis, head.encode("latin-1") + body]
        return _accepted_cache[1]

    # -- answers --------------------------------------------------------------------------

    def _refuse(self, refusal: Refusal) -> None:
        stats = self.server.api.stats
        if self._length:  # a body nobody read must not be taken for the next request
            if self._continue or self.close_connection:
                self.close_connection = True  # not sent yet, or no longer wanted: hang up
            else:
                self.rfile.read(self._length)  # at most MAX_MESSAGE_BYTES (see _framing)
        message = (f"http: refused {self.command} {self.path[:200]!r} from {self._client()}: "
                   f"{refusal.code} {refusal.message}") if refusal.log_it else ""
        if self._heartbeat:
            stats.note_rejected(TRANSPORT, refusal.reason, message)
        else:
            stats.note_refused(refusal.reason, message)
        self._reply(refusal.code, _json_body(False, refusal.message), headers=refusal.headers)

    def _client(self) -> str:
        return self.client_address[0] if self.client_address else "-"

    def _reply(self, code: int, body: Body, content_type: str = "application/json",
               headers=()) -> None:
        """Answer with `body`: bytes, or a Stream (api.Body)."""
        if isinstance(body, Stream):
            return self._stream(code, body, content_type, headers)
        self._head(code, content_type, (("Content-Length", str(len(body))), *headers))
        if self.command != "HEAD":
            self.wfile.write(body)

    def _stream(self, code: int, body: Stream, content_type: str, headers) -> None:
        """Send a Stream chunked, making each part in the gate and writing it outside: a
        slow reader holds no place in the gate, and a reader holds one part at a time. An
        HTTP/1.0 client gets the parts as they are, the end marked by closing."""
        chunked = self.request_version != "HTTP/1.0"
        if not chunked:
            self.close_connection = True
        self._head(code, content_type,
                   ((("Transfer-Encoding", "chunked"),) if chunked else ()) + tuple(headers))
        if self.command == "HEAD":
            return
        parts, gate = iter(body.parts), self.server.gate
        while True:
            with gate:
                part = next(parts, None)
            if part is None:
                break
            if part:
                self.wfile.write(b"%x\r\n%b\r\n" % (len(part), part) if chunked else part)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _head(self, code: int, content_type: str, headers) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        for name, value in headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

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

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format, *args):
        if log.isEnabledFor(logging.DEBUG):  # the request line as sent: control characters escaped
            log.debug("http %s: %s", self._client(), (format % args).translate(_CONTROL))


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(32), 127)}


class _HeadReader:
    """The connection's reader while http.server parses the headers: refuses (431) a head
    larger than `budget` bytes in all, where http.client would take 100 lines of 64 KiB."""

    def __init__(self, stream, budget: int):
        self._stream, self._left = stream, budget

    def readline(self, limit: int = -1) -> bytes:
        line = self._stream.readline(self._left + 1 if limit < 0 else min(limit, self._left + 1))
        self._left -= len(line)
        if self._left < 0:
            raise http.client.LineTooLong("request headers")
        return line


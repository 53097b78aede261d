"""Getting a heartbeat line to the daemon: a persistent Unix connection, or HTTP POST."""

import json
import os
import random
import re
import select
import socket
import stat
import threading
import time
from typing import Callable, Optional
from urllib.parse import urlsplit

from agentd.keyfile import Key, sign


MAX_LINE = 8192
MAX_BODY = 64 * 1024
MAX_DATAGRAM = 1400  # the daemon's bound for one signed UDP heartbeat
MAX_HEAD = 64 * 1024
# simple classes only: nested optional blanks backtrack for minutes on a line of spaces
_HEADER_LINE = re.compile(rb"^([^:\r\n]*):[ \t]*([^\r\n]*)", re.M)
_HEADERS_READ = (b"connection", b"content-length", b"retry-after", b"transfer-encoding")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,8}")


class TransportError(Exception):
    """A heartbeat that did not get through.

    retry_after: the daemon asked us to wait this long (HTTP 503, 429). permanent: retrying soon
    will not help (400: our bug, 401: wrong token); wait for the next interval.
    """

    def __init__(self, message: str, retry_after: Optional[float] = None, permanent: bool = False):
        super().__init__(message)
        self.retry_after, self.permanent = retry_after, permanent


class Backoff:
    """Exponential delays from `minimum` to `maximum`, each with ±20 % jitter."""

    def __init__(self, minimum: float, maximum: float, rng: Callable[[], float] = random.random):
        self.minimum, self.maximum, self._rng = minimum, maximum, rng
        self.attempts = 0

    def next_delay(self) -> float:
        base = min(self.maximum, self.minimum * 2 ** min(self.attempts, 30))
        self.attempts += 1
        return min(self.maximum, max(self.minimum, base * (0.8 + 0.4 * self._rng())))

    def reset(self) -> None:
        self.attempts = 0


class UnixTransport:
    """One persistent stream connection; the daemon never writes back, so readable = closed."""

    name = "unix"

    def __init__(self, path: str, timeout: float,
                 on_closed: Optional[Callable[[], None]] = None):
        self.path, self.timeout = path, timeout
        self._sock: Optional[socket.socket] = None
        self._on_closed = on_closed  # called (from a watcher thread) when the daemon hangs up

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def send(self, line: bytes) -> None:
        """Send one line, (re)connecting first if needed. Raises TransportError."""
        if self._sock is not None and self._peer_closed():
            self.close()
        if self._sock is None:
            self._connect()
        try:
            self._sock.sendall(line)
        except OSError as exc:
            self.close()
            raise TransportError(f"send to {self.path} failed: {exc}") from None

    def _connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                sock.connect(self.path)
                break
            except BlockingIOError as exc:
                # a full accept backlog (a connect flood) answers EAGAIN at once with a
                # timeout set: keep trying until the timeout, as a blocking connect would
                if time.monotonic() >= deadline:
                    sock.close()
                    raise TransportError(f"cannot connect to {self.path}: {exc.strerror}") from None
                time.sleep(0.01)
            except OSError as exc:
                sock.close()
                raise TransportError(f"cannot connect to {self.path}: {exc.strerror or exc}") from None
        self._sock = sock
        if self._on_closed is not None:
            threading.Thread(target=self._watch, args=(sock,), name="agentd-watch",
                             daemon=True).start()

    def _watch(self, sock: socket.socket) -> None:
        """The daemon never writes: the socket turning readable means it closed (a restart,
        say). Tell the agent at once, not when the next heartbeat fails an interval later."""
        poller = select.poll()
        try:
            poller.register(sock, select.POLLIN | select.POLLRDHUP)
        except (OSError, ValueError):  # closed meanwhile
            return
        while True:
            try:
                if poller.poll():
                    break
            except InterruptedError:
                continue
            except (OSError, ValueError):
                return
        if sock is self._sock and self._on_closed is not None:
            self._on_closed()

    def _peer_closed(self) -> bool:
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
            return bool(readable) and self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except OSError:
            return True

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes its watcher, which then sees it is old
            except OSError:
                pass
            sock.close()

    def forget(self) -> None:
        """After fork(), in the child: drop the connection the parent still uses. Only this
        process's descriptor closes: no shutdown, which would cut the parent off too."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()




class UdpTransport:
    """One signed datagram per heartbeat (`HB1 KEYID HMAC PAYLOAD`), never answered: a
    lost one is a missed beat. Resolves the target once, again after a send fails."""

    name = "udp"

    def __init__(self, target: str, key: Key):
        parts = urlsplit("udp://" + target)
        self.target, self._host, self._port = target, parts.hostname, parts.port
        self.key = key
        self._sock: Optional[socket.socket] = None
        self._address = None
        self.connected = False

    def send(self, line: bytes) -> None:
        datagram = sign(self.key, line.rstrip(b"\n"))
        if len(datagram) > MAX_DATAGRAM:
            raise TransportError(f"heartbeat of {len(datagram)} bytes is larger than a "
                                 f"datagram ({MAX_DATAGRAM})", permanent=True)
        try:
            if self._sock is None:
                family, _, _, _, self._address = socket.getaddrinfo(
                    self._host, self._port, type=socket.SOCK_DGRAM)[0]
                self._sock = socket.socket(family, socket.SOCK_DGRAM)
            self._sock.sendto(datagram, self._address)
        except OSError as exc:
            self.close()
            raise TransportError(f"send to udp {self.target} failed: {exc}") from None
        self.connected = True

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        self.connected = False

    forget = close  # after fork(): a datagram socket has nothing to shut down


class HttpTransport:
    """POST /heartbeat over one reused keep-alive connection, with a bearer token if set.

    A small HTTP/1.1 client of its own: http.client would cost the agent ~5 MB.
    """

    name = "http"

    def __init__(self, url: str, timeout: float, token: Optional[str] = None,
                 ca_file: str = ""):
        parts = urlsplit(url)
        self.url, self.timeout, self.token = url, timeout, token
        self._tls = None
        if parts.scheme == "https":  # the server verified: the system's CAs, or ca_file's
            import ssl  # here: ~2 MB an agent over plain HTTP or Unix does not need
            if ca_file and not stat.S_ISREG(os.stat(ca_file).st_mode):  # OpenSSL would
                raise OSError(f"{ca_file} is not a regular file")  # wait on a FIFO for ever
            self._tls = ssl.create_default_context(cafile=ca_file or None)
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        self._path = parts.path or "/heartbeat"
        host = f"[{self._host}]" if ":" in self._host else self._host
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self._head = (f"POST {self._path} HTTP/1.1\r\nHost: {host}:{self._port}\r\n"
                      f"Content-Type: application/json\r\n{auth}").encode("latin-1")
        self._sock: Optional[socket.socket] = None
        self._poll = None
        self._buf = b""
        self._deadline = 0.0
        self.connected = False

    def send(self, line: bytes) -> None:
        """POST one heartbeat; raises TransportError (see its retry_after and permanent).
        The whole exchange ends within `timeout`, however the daemon trickles its answer."""
        self._deadline = time.monotonic() + self.timeout
        if self._sock is not None and (self._buf or self._stirred()):
            self.close()  # bytes no request asked for, or the daemon's close: out of step
        for reused in (self._sock is not None, False):
            try:
                if self._sock is None:
                    self._open()
                self._send_all(self._request(line))
                status, headers, body = self._read_response()
                break
            except (OSError, ValueError) as exc:
                self.close()
                # a kept connection that failed is tried once more on a new one, within the
                # same deadline; not after a timeout (the daemon may have the beat already)
                if not reused or isinstance(exc, socket.timeout):
                    raise TransportError(f"POST {self.url} failed: {exc}") from None
        self.connected = True
        if headers.get(b"connection") == b"close":
            self.close()
        if 200 <= status < 300:
            return
        message = _message(body)
        if status == 503:
            raise TransportError(f"daemon busy (503): {message}",
                                 retry_after=_seconds(headers.get(b"retry-after")))
        if status == 400:
            raise TransportError(f"daemon rejected our heartbeat (400): {message}", permanent=True)
        if status == 401:
            raise TransportError("daemon refused our token (401): check heartbeat.auth_token_file",
                                 permanent=True)
        if status == 403:
            raise TransportError(f"daemon refused our token for this agent id (403): {message}",
                                 permanent=True)
        if status == 409:  # another process holds our id on the daemon's socket
            raise TransportError(f"daemon refused our agent id (409): {message}", permanent=True)
        if status == 429:
            raise TransportError(f"daemon is not taking new agents now (429): {message}",
                                 retry_after=_seconds(headers.get(b"retry-after")))
        raise TransportError(f"daemon answered {status}: {message}")

    def _stirred(self) -> bool:
        """Something came on the kept connection between two beats: an answer nobody
        asked for, or the end of the stream. (Not judged over TLS, where the server's
        session tickets arrive unasked.)"""
        return self._tls is None and bool(self._poll.poll(0))

    def _open(self) -> None:
        sock = socket.create_connection((self._host, self._port), timeout=self._left())
        if self._tls is not None:
            try:
                sock = self._tls.wrap_socket(sock, server_hostname=self._host)
            except OSError:  # ssl.SSLError among them
                sock.close()
                raise
        else:
            # blocking, each wait a poll() on the deadline: 4 system calls an exchange, where
            # socket timeouts made 6 (a poll before each call, one to set each timeout)
            sock.setblocking(True)
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        self._sock, self._buf = sock, b""

    def _request(self, body: bytes) -> bytes:
        return b"%sContent-Length: %d\r\n\r\n%s" % (self._head, len(body), body)

    def _left(self) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out")
        return left

    def _send_all(self, data: bytes) -> None:
        """The request, whole, within what is left of the exchange's time."""
        if self._tls is not None:  # the ssl module's calls take no flags
            self._sock.settimeout(self._left())
            self._sock.sendall(data)
            return
        view = memoryview(data)
        while view:
            try:
                view = view[self._sock.send(view, socket.MSG_DONTWAIT):]
            except BlockingIOError:  # the daemon is not reading: wait for room, not for ever
                room = select.poll()  # (not select(): a host program may have fds past 1024)
                room.register(self._sock, select.POLLOUT)
                if not room.poll(self._left() * 1000.0):
                    raise socket.timeout("timed out") from None

    def _recv(self) -> bool:
        """Read what has arrived onto the buffer, within what is left of the exchange's
        time (a signal's interruption resumes with what is left); False at the end of the
        stream."""
        if self._tls is not None:
            self._sock.settimeout(self._left())
            data = self._sock.recv(65536)
        else:
            while True:
                if not self._poll.poll(self._left() * 1000.0):
                    raise socket.timeout("timed out")
                try:
                    data = self._sock.recv(65536, socket.MSG_DONTWAIT)
                    break
                except BlockingIOError:
                    continue  # woken for nothing
        self._buf += data
        return bool(data)

    def _read_response(self):
        """(status, headers as lower-cased bytes, body); ValueError on anything malformed. The
        daemon's answer is small: usually one recv holds all of it."""
        status, headers = self._read_head()
        while 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
            status, headers = self._read_head()
        if status in (204, 304):  # no body, whatever the headers say
            body = b""
        elif headers.get(b"transfer-encoding") == b"chunked":
            body = self._read_chunked()
        elif headers.get(b"content-length", b"").isdigit():
            length = int(headers[b"content-length"])
            body = self._take(min(length, MAX_BODY))
            if length > MAX_BODY:  # the rest is not read: this stream is out of step
                headers[b"connection"] = b"close"
        else:
            while len(self._buf) < MAX_BODY and self._recv():
                pass
            body, self._buf = self._buf[:MAX_BODY], b""
            headers[b"connection"] = b"close"
        return status, headers, body

    def _read_head(self):
        """The next answer's status and the headers the client reads (lower-cased)."""
        end = _HEAD_END.search(self._buf) if self._buf else None
        while end is None:
            if len(self._buf) > MAX_HEAD:
                raise ValueError("answer's header too large")
            if not self._recv():
                raise ValueError("connection closed by the daemon")
            end = _HEAD_END.search(self._buf)
        head, self._buf = self._buf[:end.start()], self._buf[end.end():]
        status_line, _, rest = head.partition(b"\n")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ValueError(f"not an HTTP answer: {status_line[:80]!r}")
        found = dict(_HEADER_LINE.findall(rest.lower()))
        if any(name[-1:] in (b" ", b"\t") for name in found):  # `Content-Length : 2`, which
            found = {name.strip(b" \t"): value for name, value in found.items()}  # RFC 7230
        return int(parts[1]), {name: found[name].rstrip(b" \t")  # forbids; taken as before
                               for name in _HEADERS_READ if name in found}

    def _take(self, size: int) -> bytes:
        """The next `size` bytes of the stream; ValueError if it ends first."""
        while len(self._buf) < size:
            if not self._recv():
                raise ValueError("connection closed mid-answer")
        data, self._buf = self._buf[:size], self._buf[size:]
        return data

    def _line(self) -> bytes:
        while b"\n" not in self._buf:
            if len(self._buf) > MAX_LINE:
                raise ValueError("answer's line too long")
            if not self._recv():
                raise ValueError("connection closed mid-answer")
        line, self._buf = self._buf.split(b"\n", 1)
        return line.rstrip(b"\r")

    def _read_chunked(self) -> bytes:
        body = b""
        while True:
            size = self._line().split(b";")[0].strip()
            if not _CHUNK_SIZE.fullmatch(size):
                raise ValueError(f"not a chunk size: {size[:20]!r}")
            size = int(size, 16)
            if size == 0:
                while self._line():  # trailers, up to the empty line
                    pass
                return body
            if size > MAX_BODY - len(body):
                raise ValueError("answer too large")
            body += self._take(size)
            self._line()

    def close(self) -> None:
        sock, self._sock, self._buf = self._sock, None, b""
        if sock is not None:
            sock.close()
        self.connected = False

    def forget(self) -> None:
        """After fork(), in the child: drop the parent's connection (only this process's
        descriptor closes; the parent keeps using its own)."""
        sock, self._sock, self._buf = self._sock, None, b""
        if sock is not None:
            sock.close()
        self.connected = False


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body).get("message", ""))[:500]
    except (ValueError, AttributeError):
        return body[:200].decode("utf-8", "replace")


def _seconds(value: Optional[bytes]) -> float:
    try:
        return max(0.1, min(300.0, float(value)))
    except (TypeError, ValueError):
        return 1.0

"""Getting a heartbeat line to the daemon: a persistent Unix connection, or HTTP POST."""

import json
import os
import random
import select
import socket
import threading
import time
from typing import Callable, Optional
from urllib.parse import urlsplit


MAX_LINE = 8192
MAX_BODY = 64 * 1024


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


_ABANDONED: list = []  # a fork child's copies of the parent's connection (see forget)


class HttpTransport:
    """POST /heartbeat over one reused keep-alive connection, with a bearer token if set.

    A small HTTP/1.1 client of its own: http.client would cost the agent ~5 MB.
    """

    name = "http"

    def __init__(self, url: str, timeout: float, token: Optional[str] = None):
        parts = urlsplit(url)
        self.url, self.timeout, self.token = url, timeout, token
        self._host, self._port = parts.hostname, parts.port or 80
        self._path = parts.path or "/heartbeat"
        self._sock: Optional[socket.socket] = None
        self._rfile = None
        self.connected = False

    def send(self, line: bytes) -> None:
        """POST one heartbeat; raises TransportError (see its retry_after and permanent)."""
        for reused in (self._sock is not None, False):
            try:
                if self._sock is None:
                    self._open()
                self._sock.sendall(self._request(line))
                status, headers, body = self._read_response()
                break
            except (OSError, ValueError) as exc:
                self.close()
                if not reused:  # a fresh connection failed too: the daemon is not there
                    raise TransportError(f"POST {self.url} failed: {exc}") from None
        self.connected = True
        if headers.get("connection", "").lower() == "close":
            self.close()
        if 200 <= status < 300:
            return
        message = _message(body)
        if status == 503:
            raise TransportError(f"daemon busy (503): {message}",
                                 retry_after=_seconds(headers.get("retry-after")))
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
                                 retry_after=_seconds(headers.get("retry-after")))
        raise TransportError(f"daemon answered {status}: {message}")

    def _open(self) -> None:
        self._sock = socket.create_connection((self._host, self._port), timeout=self.timeout)
        self._rfile = self._sock.makefile("rb")

    def _request(self, body: bytes) -> bytes:
        auth = f"Authorization: Bearer {self.token}\r\n" if self.token else ""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return (f"POST {self._path} HTTP/1.1\r\nHost: {host}:{self._port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{auth}\r\n"
                ).encode("latin-1") + body

    def _read_response(self):
        """(status, lower-cased headers, body); ValueError on anything malformed."""
        status_line = self._rfile.readline(MAX_LINE)
        if not status_line:
            raise ValueError("connection closed by the daemon")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ValueError(f"not an HTTP answer: {status_line[:80]!r}")
        headers = {}
        for _ in range(100):
            raw = self._rfile.readline(MAX_LINE)
            if raw in (b"\r\n", b"\n", b""):
                break
            name, _, value = raw.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = self._read_chunked()
        elif headers.get("content-length", "").isdigit():
            body = self._rfile.read(min(int(headers["content-length"]), MAX_BODY))
        else:
            body = self._rfile.read(MAX_BODY)
            headers["connection"] = "close"
        return int(parts[1]), headers, body

    def _read_chunked(self) -> bytes:
        body = b""
        while len(body) <= MAX_BODY:
            size = int(self._rfile.readline(MAX_LINE).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                self._rfile.readline(MAX_LINE)
                return body
            body += self._rfile.read(size)
            self._rfile.readline(MAX_LINE)
        raise ValueError("answer too large")

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._rfile.close()
                self._sock.close()
            finally:
                self._sock, self._rfile = None, None
        self.connected = False

    def forget(self) -> None:
        """After fork(), in the child: drop the parent's connection without touching its
        reader, whose lock a parent thread (gone here) may hold mid-read: closing it would
        wait for ever. Only this process's descriptor closes; the objects are kept from the
        garbage collector, which would close the reader the same way."""
        if self._sock is not None:
            _ABANDONED.append((self._sock, self._rfile))
            try:
                os.close(self._sock.detach())
            except OSError:
                pass
        self._sock, self._rfile, self.connected = None, None, False


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body).get("message", ""))[:500]
    except (ValueError, AttributeError):
        return body[:200].decode("utf-8", "replace")


def _seconds(value: Optional[str]) -> float:
    try:
        return max(0.1, min(300.0, float(value)))
    except (TypeError, ValueError):
        return 1.0

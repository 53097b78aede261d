"""Getting a heartbeat line to the daemon: a persistent Unix connection, or HTTP POST."""

import json
import random
import select
import socket
from typing import Callable, Optional
from urllib.parse import urlsplit


class TransportError(Exception):
    """A heartbeat that did not get through.

    retry_after: the daemon asked us to wait this long (HTTP 503). permanent: retrying soon
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

    def __init__(self, path: str, timeout: float):
        self.path, self.timeout = path, timeout
        self._sock: Optional[socket.socket] = None

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
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise TransportError(f"cannot connect to {self.path}: {exc.strerror or exc}") from None
        self._sock = sock

    def _peer_closed(self) -> bool:
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
            return bool(readable) and self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except OSError:
            return True

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None


class HttpTransport:
    """POST /heartbeat over one reused keep-alive connection, with a bearer token if set."""

    name = "http"

    def __init__(self, url: str, timeout: float, token: Optional[str] = None):
        parts = urlsplit(url)
        self.url, self.timeout, self.token = url, timeout, token
        self._host, self._port = parts.hostname, parts.port or 80
        self._path = parts.path or "/heartbeat"
        self._conn = None
        self.connected = False

    def send(self, line: bytes) -> None:
        """POST one heartbeat; raises TransportError (see its retry_after and permanent)."""
        import http.client  # only agents that use HTTP pay for it (~5 MB)
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for reused in (self._conn is not None, False):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
            try:
                self._conn.request("POST", self._path, body=line, headers=headers)
                resp = self._conn.getresponse()
                body = resp.read()
                break
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if not reused:  # a fresh connection failed too: the daemon is not there
                    raise TransportError(f"POST {self.url} failed: {exc}") from None
        self.connected = True
        if 200 <= resp.status < 300:
            return
        message = _message(body)
        if resp.status == 503:
            raise TransportError(f"daemon busy (503): {message}",
                                 retry_after=_seconds(resp.getheader("Retry-After")))
        if resp.status == 400:
            raise TransportError(f"daemon rejected our heartbeat (400): {message}", permanent=True)
        if resp.status == 401:
            raise TransportError("daemon refused our token (401): check heartbeat.auth_token_file",
                                 permanent=True)
        raise TransportError(f"daemon answered {resp.status}: {message}")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.connected = False


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

"""One bounded HTTP exchange for the daemon's outgoing requests (the upstream report,
Alertmanager, webhooks): http:// or https:// (the system's CAs, hostname checked)."""

import http.client
import os
import socket
import ssl
import stat
import threading
from typing import Dict, Optional, Tuple
from urllib.parse import urlsplit

# What one failed request can raise: socket errors (OSError, ssl.SSLError among them), a
# server that does not speak HTTP (BadStatusLine, IncompleteRead: HTTPException), a bad
# URL (ValueError)
SEND_ERRORS = (OSError, http.client.HTTPException, ValueError)
MAX_ANSWER = 4096  # bytes of an answer read by default (and shown in the log on an error)

_TLS: Optional[ssl.SSLContext] = None


def request(method: str, url: str, body: Optional[bytes], headers: Dict[str, str],
            timeout: float, max_answer: int = MAX_ANSWER,
            tls: Optional[ssl.SSLContext] = None) -> Tuple[int, bytes]:
    """(status, the answer's first `max_answer` bytes). The whole exchange ends within
    `timeout`: a server that trickles a byte a second, or answers `100 Continue` for
    ever, has its connection shut, so a hostile peer cannot hang the caller's thread (and
    starve the watchdog) or fill the memory with an endless answer. Raises SEND_ERRORS."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port or 443, timeout=timeout,
                                           context=tls or _tls())
    elif parts.scheme == "http":
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    else:
        raise ValueError(f"not an http:// or https:// URL: {url[:100]!r}")
    try:
        conn.connect()
        shut: list = []
        deadline = threading.Timer(timeout, _shut, (conn.sock, shut))
        deadline.daemon = True
        deadline.start()
        try:
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request(method, path, body, headers)
            resp = conn.getresponse()
            return resp.status, resp.read(max_answer)
        except SEND_ERRORS:
            if shut:  # our deadline cut it, not the peer: say so ("connection closed" misleads)
                raise TimeoutError(f"timed out: no whole answer within {timeout:g}s") from None
            raise
        finally:
            deadline.cancel()
    finally:
        conn.close()


def tls_context(ca_file: str = "") -> ssl.SSLContext:
    """Server verification against `ca_file` (PEM), or the system's CAs. Raises OSError
    (ssl.SSLError among them) for a file it cannot load."""
    if not ca_file:
        return _tls()
    regular_file(ca_file)
    return ssl.create_default_context(cafile=ca_file)


def regular_file(path: str) -> None:
    """Raises OSError unless `path` is a regular file: OpenSSL would wait for ever on a
    FIFO (at a reload, that is the main thread and the watchdog)."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError(f"{path} is not a regular file")


def _tls() -> ssl.SSLContext:
    global _TLS
    if _TLS is None:
        _TLS = ssl.create_default_context()
    return _TLS


def _shut(sock, shut: list) -> None:
    shut.append(True)
    try:
        sock.shutdown(socket.SHUT_RDWR)  # the blocked read returns at once
    except OSError:
        pass

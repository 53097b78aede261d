"""Raw HTTP/1.1 over a socket: send exact bytes, read every response the server sends back."""

import socket
import time
from typing import List, NamedTuple


class Response(NamedTuple):
    status: int
    headers: dict  # lower-cased names
    body: bytes


def exchange(port: int, data: bytes, quiet: float = 0.5, timeout: float = 5.0,
             host: str = "127.0.0.1") -> (List[Response], bool):
    """Send `data` on one connection; return the responses read until the server closes
    it or stays quiet for `quiet` seconds, and whether it closed the connection."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        raw, closed = b"", False
        deadline = time.monotonic() + timeout
        s.settimeout(quiet)
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            raw += chunk
    return parse_responses(raw), closed


def parse_responses(raw: bytes) -> List[Response]:
    """Split a byte stream into responses (Content-Length or chunked framing)."""
    out = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if not sep:
            raise AssertionError(f"truncated response head: {raw[:200]!r}")
        lines = head.decode("latin-1").split("\r\n")
        version, status = lines[0].split(" ", 2)[:2]
        assert version.startswith("HTTP/1."), lines[0]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding") == "chunked":
            body, raw = dechunk(rest)
            out.append(Response(int(status), headers, body))
            continue
        length = int(headers.get("content-length", "0"))
        out.append(Response(int(status), headers, rest[:length]))
        raw = rest[length:]
    return out


def dechunk(raw: bytes):
    """(the body of a chunked answer, the bytes after it); strict: hex sizes, CRLFs."""
    body = b""
    while True:
        size, sep, raw = raw.partition(b"\r\n")
        assert sep and size and all(c in b"0123456789abcdef" for c in size), size[:50]
        n = int(size, 16)
        assert raw[n:n + 2] == b"\r\n", raw[n:n + 10]
        body, raw = body + raw[:n], raw[n + 2:]
        if n == 0:
            return body, raw


def request(method: str, target: str, body: bytes = b"", headers=(), host: str = "127.0.0.1",
            length: bool = True) -> bytes:
    """One request as bytes; `headers` are (name, value) pairs sent as given."""
    lines = [f"{method} {target} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{name}: {value}" for name, value in headers]
    if length and body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

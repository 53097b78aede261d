"""Probes: is a watched process that is alive also answering? A TCP connect, an HTTP GET
that must answer 2xx, or a file that must have been written lately. Each runs once a
beat with a timeout; `failures` failures in a row make the target `unresponsive`."""

import os
import socket
import time
from typing import Callable, Optional
from urllib.parse import urlsplit

MAX_ANSWER_LINE = 1024  # bytes of an HTTP status line read


def host_port(value: str):
    """("127.0.0.1", 5432) from "127.0.0.1:5432" or "[::1]:5432"; raises ValueError."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("HOST:PORT such as 127.0.0.1:5432 or [::1]:5432")
    return host, int(port)


def tcp_probe(target: str, timeout: float) -> Callable[[], Optional[str]]:
    host, port = host_port(target)

    def probe() -> Optional[str]:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as exc:
            return f"tcp {target}: {exc.strerror or exc}"
        return None
    return probe


def http_probe(url: str, timeout: float) -> Callable[[], Optional[str]]:
    """GET `url` (http:// only, HTTP/1.0, the status line read): 2xx passes."""
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    request = (f"GET {path} HTTP/1.0\r\nHost: {parts.netloc}\r\nUser-Agent: agentd-probe\r\n"
               "Connection: close\r\n\r\n").encode()

    def probe() -> Optional[str]:
        deadline = time.monotonic() + timeout
        try:
            with socket.create_connection((host, port), timeout=timeout) as sock:
                sock.sendall(request)
                line = b""
                while b"\n" not in line and len(line) < MAX_ANSWER_LINE:
                    sock.settimeout(max(0.01, deadline - time.monotonic()))
                    chunk = sock.recv(MAX_ANSWER_LINE - len(line))
                    if not chunk:
                        break
                    line += chunk
        except OSError as exc:
            return f"http {url}: {exc.strerror or exc}"
        words = line.split(b"\n", 1)[0].split()
        status = words[1].decode("ascii", "replace") if len(words) > 1 else ""
        if not (status.isdigit() and status.startswith("2") and len(status) == 3):
            return f"http {url}: answered {status or 'nothing'}, not 2xx"
        return None
    return probe


def file_probe(path: str, max_age: float) -> Callable[[], Optional[str]]:
    def probe() -> Optional[str]:
        try:
            age = time.time() - os.stat(path).st_mtime
        except OSError as exc:
            return f"file {path}: {exc.strerror or exc}"
        if age > max_age:
            return f"file {path} was last written {age:.0f}s ago (more than {max_age:g}s)"
        return None
    return probe


def make_probe(cfg) -> Optional[Callable[[], Optional[str]]]:
    """The probe a ProbeConfig asks for, or None: probe() is None when it passes, else
    what failed, in words."""
    if cfg.tcp:
        return tcp_probe(cfg.tcp, cfg.timeout)
    if cfg.http:
        return http_probe(cfg.http, cfg.timeout)
    if cfg.file:
        return file_probe(cfg.file, cfg.max_age)
    return None

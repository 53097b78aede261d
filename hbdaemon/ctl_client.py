"""hbctl's way to the daemon: its HTTP API, found through the daemon's own config."""

import json
import socket
import urllib.error
import urllib.request
from typing import Optional

from hbdaemon.config import ConfigError, load_config, read_token


class DaemonDown(Exception):
    """The daemon does not answer (LSB: not running)."""


class ApiError(Exception):
    """The daemon answered with an error; `status` is the HTTP code."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def default_url(config_path: Optional[str]) -> tuple:
    """(base URL, token or None, note) from the daemon's config; defaults if unreadable."""
    try:
        cfg = load_config(config_path, required=bool(config_path))
    except ConfigError as exc:
        return "http://127.0.0.1:8690", None, f"using the default URL: {exc}"
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(cfg.http.host, cfg.http.host)
    scheme = "https" if cfg.http.tls_cert_file else "http"
    url = f"{scheme}://[{host}]:{cfg.http.port}" if ":" in host else \
        f"{scheme}://{host}:{cfg.http.port}"
    try:
        token = read_token(cfg.http.auth_token_file, cfg.source)
    except ConfigError as exc:  # e.g. a token file only the daemon's user may read
        return url, None, str(exc)
    return url, token.decode() if token else None, ""


class Client:
    """A few JSON calls with a timeout; raises DaemonDown or ApiError."""

    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 5.0,
                 ca_file: str = ""):
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout
        self._tls = None
        if self.url.startswith("https://"):  # the daemon verified: --ca-file, or the system's
            from hbdaemon.httpclient import tls_context
            self._tls = tls_context(ca_file)

    def get(self, path: str):
        return self._call("GET", path)

    def delete(self, path: str):
        return self._call("DELETE", path)

    def post(self, path: str, doc: dict):
        return self._call("POST", path, json.dumps(doc).encode())

    def text(self, path: str) -> str:
        return self._call("GET", path, raw=True)

    def _call(self, method: str, path: str, body: Optional[bytes] = None, raw: bool = False):
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._tls) as resp:
                data = resp.read()
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, _message(exc.read(), exc.code)) from None
        except (urllib.error.URLError, socket.timeout, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            if self._tls is not None and type(reason).__module__ == "ssl":
                raise ApiError(0, f"TLS with {self.url} failed: {reason} (--ca-file gives "
                                  "the CA that signed the daemon's certificate)") from None
            if self._tls is None and isinstance(reason, ConnectionResetError):
                # taken and dropped unanswered: what a TLS listener does with plain HTTP
                raise ApiError(0, f"{self.url} took the connection and closed it without an "
                                  "answer: if the daemon serves HTTPS (http.tls_cert_file), "
                                  "use https://") from None
            raise DaemonDown(f"cannot reach hbdaemon at {self.url}: {reason}") from None
        return data.decode() if raw else json.loads(data)


def _message(body: bytes, code: int) -> str:
    try:
        return json.loads(body).get("message") or f"HTTP {code}"
    except (ValueError, AttributeError):
        return f"HTTP {code}"

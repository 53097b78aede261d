"""Converters for config values: each takes YAML or environment input and returns a clean value.

A converter raises ValueError whose text says what is allowed; the config loader adds
the file and key. Shared by hbdaemon and agentd: agentd/convert.py is a byte-identical
copy (tests/unit/test_shared_copies.py keeps them equal; `make sync-copies` refreshes it).
"""

import math
import os
import re
from urllib.parse import urlsplit

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def duration(value) -> float:
    """Seconds from `30s`, `1m30s`, `500ms`, `2h` or a plain number of seconds (>= 0)."""
    expected = "a duration >= 0 such as 30s, 1m30s, 500ms or a number of seconds"
    if isinstance(value, bool):
        raise ValueError(expected)
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:  # an integer of hundreds of digits
            raise ValueError(expected) from None
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            pos, seconds = 0, 0.0
            for m in _DURATION_PART.finditer(text):
                if m.start() != pos:
                    raise ValueError(expected) from None
                seconds += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
                pos = m.end()
            if pos != len(text):
                raise ValueError(expected) from None
    else:
        raise ValueError(expected)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(expected)
    return seconds


def positive_duration(value) -> float:
    """A duration that must be more than zero."""
    seconds = duration(value)
    if seconds <= 0:
        raise ValueError("a duration > 0 such as 30s, 1m30s, 500ms or a number of seconds")
    return seconds


def byte_size(value) -> int:
    """Bytes from an integer or `500MB`, `512MiB`, `1.5GB` (>= 0)."""
    expected = "a size in bytes >= 0, or with a unit such as 500MB or 512MiB"
    if isinstance(value, bool):
        raise ValueError(expected)
    if isinstance(value, int):
        size = value
    elif isinstance(value, float) and value.is_integer():
        size = int(value)
    elif isinstance(value, str):
        m = _SIZE.fullmatch(value.strip())
        if m is None:
            raise ValueError(expected)
        try:
            size = int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()])
        except OverflowError:  # hundreds of digits: float() gives inf
            raise ValueError(expected) from None
    else:
        raise ValueError(expected)
    if not 0 <= size < 2**63:
        raise ValueError(expected)
    return size


def integer(low: int, high: int):
    """A converter for a whole number between `low` and `high`."""
    def convert(value) -> int:
        expected = f"a whole number from {low} to {high}"
        if isinstance(value, bool):
            raise ValueError(expected)
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise ValueError(expected) from None
        if not isinstance(value, int) or not low <= value <= high:
            raise ValueError(expected)
        return value
    convert.__name__ = f"integer_{low}_{high}"
    return convert


port = integer(0, 65535)


def percent(value) -> float:
    """A number from 0 to 100."""
    expected = "a number from 0 to 100 (percent of the machine)"
    if isinstance(value, bool):
        raise ValueError(expected)
    if isinstance(value, str):
        try:
            value = float(value.strip().rstrip("%"))
        except ValueError:
            raise ValueError(expected) from None
    if not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise ValueError(expected)
    return float(value)


def boolean(value) -> bool:
    """true/false (also yes/no, on/off, 1/0 from the environment)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError("true or false")


def text(value) -> str:
    """Any string (numbers are accepted and kept as written)."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError("a string")
    return str(value)


def choice(*allowed: str):
    """A converter for one of a fixed set of words (case-insensitive)."""
    def convert(value) -> str:
        if isinstance(value, str) and value.strip().lower() in allowed:
            return value.strip().lower()
        raise ValueError("one of " + ", ".join(allowed))
    convert.__name__ = "choice"
    return convert


def file_mode(value) -> int:
    """An octal permission mode given as a string such as "0660"."""
    expected = 'an octal mode in quotes, such as "0660"'
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # YAML reads an unquoted 660 as decimal digits; treat as octal text
    if not isinstance(value, str) or not re.fullmatch(r"0?[0-7]{3,4}", value.strip()):
        raise ValueError(expected)
    return int(value.strip(), 8)


def absolute_path(value) -> str:
    """An absolute or relative filesystem path, made absolute."""
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise ValueError("a filesystem path")
    return os.path.abspath(value.strip())


def optional_path(value) -> str:
    """A path, or empty for none."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return ""
    return absolute_path(value)


def socket_path(value) -> str:
    """A path for an AF_UNIX socket: the kernel takes at most 107 bytes."""
    path = absolute_path(value)
    if len(os.fsencode(path)) > 107:
        raise ValueError(f"a socket path of at most 107 bytes ({path!r} is longer)")
    return path


def _url(value, pattern: str, kind: str, example: str) -> str:
    """A URL of `kind` whose host and port urllib can use (checked here, not at first use)."""
    url = text(value).strip()
    if not re.fullmatch(pattern + r"://[^/\s]+(/\S*)?", url):
        raise ValueError(f"an {kind} URL such as {example}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # a port out of range or not a number, a bad [IPv6] literal
        raise ValueError(f"an {kind} URL with a valid host and port 1-65535 ({exc})") from None
    if not parts.hostname or port == 0:
        raise ValueError(f"an {kind} URL with a host and a port 1-65535, such as {example}")
    return url


def http_url(value) -> str:
    """An http:// URL whose host and port urllib can use."""
    return _url(value, "http", "http://", "http://127.0.0.1:8690/heartbeat")


def web_url(value) -> str:
    """An http:// or https:// URL with a host (and a valid port if one is given)."""
    return _url(value, "https?", "http:// or https://", "https://hooks.example.com/hb")


def host_port(value) -> str:
    """HOST:PORT (an IPv6 address in brackets: [::1]:8692), or empty for none."""
    hostport = text(value).strip()
    if not hostport:
        return ""
    try:
        parts = urlsplit("udp://" + hostport)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"HOST:PORT with a port 1-65535 ({exc})") from None
    if not parts.hostname or not port or parts.path or parts.query or "@" in hostport:
        raise ValueError("HOST:PORT, such as central.example.com:8692 or [::1]:8692")
    return hostport


def url_list(value) -> tuple:
    """A list of http(s):// URLs (from the environment: separated by commas or spaces)."""
    items = re.split(r"[,\s]+", value.strip()) if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ValueError("a list of http:// or https:// URLs")
    return tuple(web_url(item) for item in items if not isinstance(item, str) or item.strip())


_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def label_map(value) -> tuple:
    """Prometheus labels as a mapping of name to value (from the environment:
    name=value pairs separated by commas), kept as sorted (name, value) pairs."""
    if isinstance(value, str):
        pairs = [p.partition("=") for p in value.split(",") if p.strip()]
        if any(not sep for _, sep, _ in pairs):
            raise ValueError("name=value pairs separated by commas, e.g. cluster=eu-1,team=ops")
        value = {name.strip(): val.strip() for name, _, val in pairs}
    if not isinstance(value, dict):
        raise ValueError("a mapping of label names to values, e.g. {cluster: eu-1}")
    out = []
    for name, val in value.items():
        if not isinstance(name, str) or not _LABEL_NAME.fullmatch(name) or name.startswith("__"):
            raise ValueError(f"label name {name!r}: letters, digits and _, not starting with a "
                             "digit or __")
        if isinstance(val, (dict, list, tuple)) or val is None:
            raise ValueError(f"label {name}: a single value")
        out.append((name, text(val)))
    return tuple(sorted(out))


def optional_http_url(value) -> str:
    """An http:// URL, or empty for none."""
    return http_url(value) if text(value).strip() else ""


def argv(value) -> tuple:
    """A command as a non-empty list of strings (run without a shell)."""
    if (not isinstance(value, (list, tuple)) or not value
            or not all(isinstance(a, str) and a for a in value)):
        raise ValueError('a list of strings, the program and its arguments, e.g. ["/usr/bin/logger", "-t", "hb"]')
    return tuple(value)


def word_list(*allowed: str):
    """A converter for a list of words from `allowed` (a single word is taken as a list of one)."""
    def convert(value) -> tuple:
        items = [value] if isinstance(value, str) else value
        if (not isinstance(items, (list, tuple)) or not items
                or not all(isinstance(i, str) and i in allowed for i in items)):
            raise ValueError("a list of: " + ", ".join(allowed))
        return tuple(items)
    convert.__name__ = "word_list"
    return convert


def glob_list(value) -> tuple:
    """A non-empty list of shell-style globs (a single glob is taken as a list of one)."""
    items = [value] if isinstance(value, str) else value
    if (not isinstance(items, (list, tuple)) or not items
            or not all(isinstance(i, str) and i.strip() for i in items)):
        raise ValueError('a list of globs matched against agent ids, e.g. ["db-*", "web-?"]')
    return tuple(i.strip() for i in items)

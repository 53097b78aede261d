"""One HTTP request's target, Host and Origin, decoded once and checked without trusting them."""

import ipaddress
import re
from typing import Dict, List, NamedTuple, Optional
from urllib.parse import parse_qs, unquote

_SLASHES = re.compile(r"/{2,}")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


# the usual request head, in the strictest form: `METHOD /target HTTP/1.x` and header lines
# of a token, a colon and printable ASCII, each ending in CRLF (deterministic patterns:
# no two neighbouring parts can match the same blank, so nothing backtracks)
_PLAIN_REQUEST_LINE = re.compile(rb"([A-Z]{1,16}) ([\x21-\x7e]+) HTTP/1\.([01])\r\n")
_PLAIN_FIELDS = re.compile(rb"(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\x20-\x7e\t]*\r\n)*")
_PLAIN_FIELD = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\x20-\x7e\t]*)\r\n")
MAX_HEADERS = 100  # http.client's bound, its blank line counted: 100 lines are a 431


class PlainHead(NamedTuple):
    command: str
    path: str
    version: str     # HTTP/1.0 or HTTP/1.1
    headers: "PlainHeaders"
    size: int        # bytes of header lines, their blank line included


class PlainHeaders:
    """What http.server's email.message.Message gives for a plain head, as far as the
    handler asks it: get and get_all (case-blind names, values as sent past the colon's
    blanks), no defects, no payload."""

    defects: tuple = ()

    def __init__(self, fields: Dict[str, List[str]]):
        self._fields = fields

    def get(self, name: str, failobj=None):
        values = self._fields.get(name.lower())
        return values[0] if values else failobj

    def get_all(self, name: str, failobj=None):
        return list(self._fields.get(name.lower(), ())) or failobj

    def get_payload(self) -> str:
        return ""


def parse_plain_head(request_line: bytes, ahead: bytes) -> Optional[PlainHead]:
    """The request line and the header lines after it (`ahead`: the bytes read so far), when
    all of the head has arrived and is of the plain kind every agent and browser sends;
    None for anything else, which http.server's parser then judges (with its defects and
    refusals). Skips the email parser, which was a third of a keep-alive heartbeat's CPU
    (bench_http: 163-203 µs a heartbeat before, 116-118 after)."""
    line = _PLAIN_REQUEST_LINE.fullmatch(request_line)
    if line is None:
        return None
    if ahead.startswith(b"\r\n"):
        block, size = b"", 2
    else:
        end = ahead.find(b"\r\n\r\n")
        if end < 0:
            return None
        block, size = ahead[:end + 2], end + 4
        if not _PLAIN_FIELDS.fullmatch(block):
            return None
    found = _PLAIN_FIELD.findall(block)
    if len(found) >= MAX_HEADERS:
        return None
    fields: Dict[str, List[str]] = {}
    for name, value in found:
        fields.setdefault(name.decode("ascii").lower(), []).append(value.decode("ascii"))
    # the email parser reads a multipart or message type as a body to come: defects or a
    # payload, which the handler refuses (400); it judges those heads itself
    if any(value.split(";")[0].strip().lower().startswith(("multipart/", "message/"))
           for value in fields.get("content-type", ())):
        return None
    path = line.group(2).decode("ascii")
    if path.startswith("//"):  # as http.server does (gh-87389)
        path = "/" + path.lstrip("/")
    return PlainHead(line.group(1).decode("ascii"), path, f"HTTP/1.{line.group(3).decode()}",
                     PlainHeaders(fields), size)


class BadRequest(ValueError):
    """The request cannot be understood (answered 400, and the connection closed)."""


class Target(NamedTuple):
    """A request target: the decoded, normalised path, the query, and the authority if the
    client sent the absolute form (`GET http://host/path`)."""

    path: str
    query: dict
    authority: Optional[str]


_SEEN: dict = {}  # raw target or Host -> its parse: agents send the same few every time
_SEEN_MAX = 1024    # a client sending new ones each time only misses the cache


def _remember(key: str, value):
    if len(_SEEN) < _SEEN_MAX:
        _SEEN[key] = value
    return value


def parse_target(raw: str) -> Target:
    """Decode a request target once: `/%61gents//x/` and `/agents/x` are the same path.

    Raises BadRequest for anything that is not an origin-form or absolute-form target.
    """
    known = _SEEN.get(raw)
    if type(known) is Target:
        return known
    return _remember(raw, _parse_target(raw))


def _parse_target(raw: str) -> Target:
    authority = None
    scheme = _SCHEME.match(raw)
    if scheme:
        rest = raw[scheme.end():]
        cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
        authority, raw = rest[:cut], rest[cut:]
        if not raw.startswith("/"):
            raw = "/" + raw
    if not raw.startswith("/"):
        raise BadRequest("the request target must be a path such as /agents")
    path, _, query = raw.partition("?")
    try:
        path = unquote(path, errors="strict")
    except UnicodeDecodeError:
        raise BadRequest("the path is not valid UTF-8 once decoded") from None
    path = _SLASHES.sub("/", path)
    if len(path) > 1:
        path = path.rstrip("/") or "/"
    return Target(path, parse_qs(query, keep_blank_values=True, errors="replace"), authority)


def host_name(authority: str) -> str:
    """The host part of `host[:port]` or `[v6]:port`, lower-cased, without a trailing dot.
    Userinfo (`a@host`) is no host: the whole text is returned, which matches no name."""
    authority = authority.strip()
    if "@" in authority:
        return authority.lower()
    if authority.startswith("["):
        host = authority[1:authority.find("]")] if "]" in authority else authority[1:]
    elif authority.count(":") == 1:
        host = authority.partition(":")[0]
    else:
        host = authority
    return host.lower().rstrip(".")


def is_loopback_host(authority: str) -> bool:
    """is_loopback_name(host_name(authority)), remembered for the Host values seen."""
    known = _SEEN.get(("host", authority))
    if known is None:
        known = _remember(("host", authority), is_loopback_name(host_name(authority)))
    return known


def is_loopback_address(address: str) -> bool:
    """True for a client address as the kernel gives it (normalised text) in 127.0.0.0/8,
    ::1 or IPv4-mapped 127.x: a client on this host. A string test: it runs per heartbeat."""
    return address.startswith(("127.", "::ffff:127.")) or address == "::1"


def address_block(address: str) -> str:
    """The block one client can freely pick addresses from: all of loopback (any local user
    can bind 127.x.y.z), an IPv6 /64, else the address itself."""
    if is_loopback_address(address):
        return "loopback"
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    mapped = getattr(parsed, "ipv4_mapped", None)
    if mapped is not None:
        return str(mapped)
    if parsed.version == 6:
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return address


def is_loopback_name(host: str) -> bool:
    """True for `localhost` and loopback address literals (127.0.0.0/8, ::1, ::ffff:127.x)."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def same_origin(origin: str, host: Optional[str], scheme: str = "http") -> bool:
    """True if a browser's `Origin` names the server the request was sent to (`Host`)."""
    if host is None:
        return False
    return origin.strip().lower() == f"{scheme}://{host.strip().lower()}"

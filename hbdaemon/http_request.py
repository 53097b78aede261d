"""One HTTP request's target, Host and Origin, decoded once and checked without trusting them."""

import ipaddress
import re
from typing import NamedTuple, Optional
from urllib.parse import parse_qs, unquote

_SLASHES = re.compile(r"/{2,}")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


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

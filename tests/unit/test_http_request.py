"""Request targets, Host and Origin as the HTTP boundary reads them, and the route table."""

import pytest
from hypothesis import given, settings, strategies as st

from hbdaemon.api import ROUTES, ApiError, resolve
from hbdaemon.auth import Credentials
from hbdaemon.http_request import (BadRequest, host_name, is_loopback_name, parse_plain_head,
                                   parse_target, same_origin)


@pytest.mark.parametrize("raw,path,authority", [
    ("/agents/db-1", "/agents/db-1", None),
    ("/%61gents/db-1", "/agents/db-1", None),
    ("//agents///db-1//", "/agents/db-1", None),
    ("/%2F%2Fagents/db-1", "/agents/db-1", None),
    ("/%2561gents", "/%61gents", None),          # decoded once, not twice
    ("/", "/", None),
    ("///", "/", None),
    ("http://127.0.0.1:8690/agents?x=1", "/agents", "127.0.0.1:8690"),
    ("HTTP://h", "/", "h"),
    ("http://[/", "/", "["),
    ("http://h?state=dead", "/", "h"),
])
def test_targets_are_decoded_once_and_normalised(raw, path, authority):
    target = parse_target(raw)
    assert (target.path, target.authority) == (path, authority)


def test_the_query_is_parsed():
    assert parse_target("/events?since=10m&agent=a%2Db").query == {"since": ["10m"], "agent": ["a-b"]}


@pytest.mark.parametrize("raw", ["agents", "*", "", "%2Fagents", "/%ff", "/a%c3"])
def test_targets_that_are_not_paths_are_bad_requests(raw):
    with pytest.raises(BadRequest):
        parse_target(raw)


@pytest.mark.parametrize("authority,host", [
    ("localhost:8690", "localhost"), ("LOCALHOST.", "localhost"), ("[::1]:8690", "::1"),
    ("[::1", "::1"), ("::1", "::1"), ("127.0.0.1", "127.0.0.1"), (" evil.example:80 ", "evil.example"),
])
def test_host_name_strips_the_port(authority, host):
    assert host_name(authority) == host


@pytest.mark.parametrize("host,loopback", [
    ("localhost", True), ("127.0.0.1", True), ("127.255.0.9", True), ("::1", True),
    ("::ffff:127.0.0.1", True), ("evil.example", False), ("localhost.evil.example", False),
    ("10.0.0.1", False), ("", False), ("0.0.0.0", False), ("::", False),
])
def test_loopback_names(host, loopback):
    assert is_loopback_name(host) is loopback


def test_same_origin_compares_scheme_host_and_port():
    assert same_origin("http://127.0.0.1:8690", "127.0.0.1:8690")
    assert same_origin("HTTP://LocalHost:8690", "localhost:8690")
    assert not same_origin("http://127.0.0.1:8691", "127.0.0.1:8690")
    assert not same_origin("null", "127.0.0.1:8690")
    assert not same_origin("https://127.0.0.1:8690", "127.0.0.1:8690")
    assert not same_origin("http://127.0.0.1:8690", None)


def test_every_route_resolves_and_other_methods_get_405_with_allow():
    for route in ROUTES:
        path = route.path.replace("<id>", "db-1")
        assert resolve(route.method, path)[0] == route
    assert resolve("HEAD", "/metrics")[0].action == "metrics"
    with pytest.raises(ApiError) as err:
        resolve("get", "/healthz")
    assert (err.value.code, err.value.allow) == (405, "GET, HEAD")
    with pytest.raises(ApiError) as err:
        resolve("POST", "/agents/db-1")
    assert (err.value.code, err.value.allow) == (405, "DELETE, GET, HEAD")
    for path in ("/nope", "/agents/a/b", "/heartbeat/x"):
        with pytest.raises(ApiError) as err:
            resolve("GET", path)
        assert err.value.code == 404


def test_only_writes_need_a_credential():
    assert {(r.method, r.path) for r in ROUTES if r.credential} == \
        {("POST", "/heartbeat"), ("DELETE", "/agents/<id>"), ("POST", "/silences"),
         ("DELETE", "/silences/<id>")}


def test_credentials_grant_by_token_and_glob():
    creds = Credentials(b"admin", [(b"team-a", ("a-*",), "/etc/a")])
    assert creds.required
    assert creds.check("Bearer admin").covers("anything")
    grant = creds.check("bearer  team-a ")
    assert grant.covers("a-1") and not grant.covers("b-1") and "/etc/a" in grant.name
    for header in (None, "", "Bearer", "Bearer wrong", "Basic admin", "Bearer admin2", "Bearer \u00e9"):
        assert creds.check(header) is None
    assert not Credentials().required and Credentials().check(None).covers("x")


# -- the plain request head, read without the email parser -------------------------------

def _stdlib_head(ahead: bytes):
    """What http.server's parser makes of the header lines at the start of `ahead`, and
    how many bytes it took."""
    import http.client
    import io
    stream = io.BufferedReader(io.BytesIO(ahead))
    return http.client.parse_headers(stream), stream.tell()


NAMES = ("host", "content-length", "content-type", "connection", "expect", "origin",
         "authorization", "transfer-encoding", "x-empty", "x-a")


def _same_as_stdlib(plain, ahead: bytes) -> None:
    stdlib, size = _stdlib_head(ahead)
    for name in NAMES + tuple(k.lower() for k in stdlib.keys()):
        for asked in (name, name.upper(), name.title()):
            assert plain.headers.get(asked) == stdlib.get(asked), asked
            assert plain.headers.get_all(asked) == stdlib.get_all(asked), asked
    assert plain.headers.get("absent", "x") == "x" and not plain.headers.defects
    assert not plain.headers.get_payload() and plain.size == size


@pytest.mark.parametrize("head", [
    b"\r\n",
    b"Host: 127.0.0.1:8690\r\nContent-Type: application/json\r\nContent-Length: 120\r\n\r\n",
    b"host:x\r\nHOST:  y  \r\nX-Empty:\r\nX-A: \t tab\tinside \r\n\r\n",
    b"Authorization: Bearer abc.def~ghi==\r\nOrigin: http://h:1\r\nExpect: 100-continue\r\n\r\n",
    b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n",
])
def test_a_plain_head_reads_as_the_stdlib_parser_reads_it(head):
    plain = parse_plain_head(b"POST /heartbeat HTTP/1.1\r\n", head + b"{}")
    assert plain is not None and plain.size == len(head)
    assert (plain.command, plain.path, plain.version) == ("POST", "/heartbeat", "HTTP/1.1")
    _same_as_stdlib(plain, head + b"{}")


@pytest.mark.parametrize("line,ahead", [
    (b"POST /heartbeat HTTP/1.1\n", b"\r\n"),                    # bare LF on the request line
    (b"POST  /heartbeat HTTP/1.1\r\n", b"\r\n"),                 # two blanks
    (b"post /heartbeat HTTP/1.1\r\n", b"\r\n"),
    (b"POST /heartbeat HTTP/2.0\r\n", b"\r\n"),
    (b"POST /heartbeat HTTP/1.10\r\n", b"\r\n"),
    (b"GET /agents\r\n", b""),                                   # HTTP/0.9
    (b"GET /\xe9 HTTP/1.1\r\n", b"\r\n"),                        # not ASCII
    (b"GET /a\x85b HTTP/1.1\r\n", b"\r\n"),                      # a latin-1 blank
    (b"GET / HTTP/1.1\r\n", b"Host: x\r\n"),                     # the head is not all here
    (b"GET / HTTP/1.1\r\n", b"Host: x\n\n"),                     # bare LFs
    (b"GET / HTTP/1.1\r\n", b"Host: x\r\n X: folded\r\n\r\n"),   # obsolete line folding
    (b"GET / HTTP/1.1\r\n", b"Host : x\r\n\r\n"),                # a blank before the colon
    (b"GET / HTTP/1.1\r\n", b"Host: x\ry\r\n\r\n"),              # a bare CR
    (b"GET / HTTP/1.1\r\n", b"Host: \xc3\xa9\r\n\r\n"),          # not ASCII
    (b"GET / HTTP/1.1\r\n", b"Host: x\x00\r\n\r\n"),
    (b"GET / HTTP/1.1\r\n", b"no colon\r\n\r\n"),
    (b"GET / HTTP/1.1\r\n", b"X: 1\r\n" * 100 + b"\r\n"),       # http.client's 100, the
    # blank line counted; and types the email parser reads as a body to come:
    (b"POST / HTTP/1.1\r\n", b"Content-Type: multipart/form-data\r\n\r\n"),
    (b"POST / HTTP/1.1\r\n", b"Content-Type:  Multipart/Mixed; boundary=x\r\n\r\n"),
    (b"POST / HTTP/1.1\r\n", b"Content-Type: message/rfc822\r\n\r\n"),
    (b"POST / HTTP/1.1\r\n", b"Content-Type: text/plain\r\ncontent-type: message/http\r\n\r\n"),
])
def test_anything_but_a_plain_head_is_left_to_the_stdlib_parser(line, ahead):
    assert parse_plain_head(line, ahead) is None


def test_the_stdlib_refuses_the_heads_left_to_it():
    """The two kinds of plain-looking head that the stdlib parser refuses, where a
    reading of our own would have let them through."""
    import http.client
    with pytest.raises(http.client.HTTPException):
        _stdlib_head(b"X: 1\r\n" * 100 + b"\r\n")
    assert _stdlib_head(b"X: 1\r\n" * 99 + b"\r\n")[0].get_all("x") == ["1"] * 99
    assert parse_plain_head(b"GET / HTTP/1.1\r\n", b"X: 1\r\n" * 99 + b"\r\n") is not None
    for ctype in (b"multipart/form-data", b"message/rfc822"):
        parsed = _stdlib_head(b"Content-Type: " + ctype + b"\r\n\r\n")[0]
        assert parsed.defects or parsed.get_payload()  # the handler's 400


def test_a_plain_head_keeps_the_version_and_reduces_leading_slashes():
    plain = parse_plain_head(b"GET //x//y HTTP/1.0\r\n", b"\r\n")
    assert (plain.path, plain.version, plain.size) == ("/x//y", "HTTP/1.0", 2)


def test_a_line_of_blanks_is_read_at_once():
    """The patterns cannot backtrack: 16,000 blanks in a value (or before the end of the
    head) would freeze the daemon under the GIL if they did."""
    head = b"X: " + b" " * 16000 + b"\r\n\r\n"
    _same_as_stdlib(parse_plain_head(b"GET / HTTP/1.1\r\n", head), head)
    assert parse_plain_head(b"GET / HTTP/1.1\r\n", b"X" + b" " * 16000 + b"\r\n\r\n") is None


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["Host", "x-a", "X-A", "Content-Length", "A b", "é",
                                           "Content-Type"]),
                          st.one_of(st.text(alphabet=" \t:ab\r\n\x00é\x7f", max_size=12),
                                    st.sampled_from(["multipart/x", " Message/a;b", "text/a",
                                                     "multipart", "a/multipart/b"]))),
                max_size=6))
def test_whatever_it_takes_it_reads_as_the_stdlib_parser(fields):
    head = "".join(f"{name}:{value}\r\n" for name, value in fields).encode("utf-8") + b"\r\n"
    plain = parse_plain_head(b"GET / HTTP/1.1\r\n", head)
    if plain is not None:
        _same_as_stdlib(plain, head)
        stdlib = _stdlib_head(head)[0]
        assert not stdlib.defects and not stdlib.get_payload()  # nothing the handler refuses

"""Request targets, Host and Origin as the HTTP boundary reads them, and the route table."""

import pytest

from hbdaemon.api import ROUTES, ApiError, resolve
from hbdaemon.auth import Credentials
from hbdaemon.http_request import BadRequest, host_name, is_loopback_name, parse_target, same_origin


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

"""Attacks from outside on the real daemon: nobody can forge, erase or drown its verdicts."""

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from support.rawhttp import exchange, request
from support.tools import require_root, require_tool
from support.wait import wait_for

TOKEN = "s3cret"


def beat(agent_id="h1", pid=None, **fields) -> bytes:
    return json.dumps({"agent_id": agent_id, "pid": pid or os.getpid(), **fields}).encode()


def auth(token=TOKEN):
    return (("Authorization", f"Bearer {token}"),)


@pytest.fixture
def token_daemon(daemon_factory, short_tmp):
    """A daemon whose POST and DELETE need the token, with agent db-1 known."""
    path = os.path.join(short_tmp, "token")
    with open(path, "w") as f:
        f.write(TOKEN + "\n")
    d = daemon_factory(http={"auth_token_file": path}).start()
    assert d.post(json.loads(beat("db-1")), {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    d.wait_state("db-1", "healthy")
    return d


# -- one request boundary ------------------------------------------------------------------

@pytest.mark.parametrize("target", ["/%61gents/db-1", "//agents/db-1", "/agents//db-1",
                                    "/agents/db-1/", "/%2F%61gents/db-1",
                                    "http://127.0.0.1/agents/db-1"])
def test_every_spelling_of_a_route_needs_the_token(token_daemon, target):
    d = token_daemon
    (resp,), _ = exchange(d.port, request("DELETE", target))
    assert resp.status == 401
    assert d.agent("db-1") is not None
    (resp,), _ = exchange(d.port, request("DELETE", target, headers=auth()))
    assert resp.status == 200
    assert d.agent("db-1") is None


def test_double_encoding_is_decoded_once(token_daemon):
    (resp,), _ = exchange(token_daemon.port, request("DELETE", "/%2561gents/db-1", headers=auth()))
    assert resp.status == 404
    assert token_daemon.agent("db-1") is not None


SMUGGLED = request("DELETE", "/%61gents/db-1", headers=auth())


@pytest.mark.parametrize("first,status", [
    (request("POST", "/heartbeat", SMUGGLED, headers=auth("wrong")), 401),       # bad token
    (request("POST", "/agents", SMUGGLED), 405),                                  # wrong method
    (request("POST", "/nope", SMUGGLED), 404),                                    # unknown path
    (request("PUT", "/heartbeat", SMUGGLED), 405),
    (request("GET", "/healthz", SMUGGLED), 200),                                  # a GET with a body
    (request("DELETE", "/agents/none", SMUGGLED, headers=auth()), 404),
    (request("POST", "/heartbeat", SMUGGLED, headers=auth() + (("Origin", "http://evil.example"),)), 403),
    (request("POST", "/heartbeat", SMUGGLED, host="evil.example", headers=auth()), 421),
])
def test_a_body_left_by_a_refusal_is_never_read_as_the_next_request(token_daemon, first, status):
    d = token_daemon
    responses, _ = exchange(d.port, first)
    assert [r.status for r in responses] == [status]
    assert d.agent("db-1") is not None


@pytest.mark.parametrize("first,status", [
    (b"POST /heartbeat HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
     + hex(len(SMUGGLED))[2:].encode() + b"\r\n" + SMUGGLED + b"\r\n0\r\n\r\n", 411),
    (b"POST /heartbeat HTTP/1.1\r\nHost: localhost\r\nContent-Length: 70000\r\n\r\n" + SMUGGLED, 413),
    (b"POST /heartbeat HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 0\r\n\r\n"
     + SMUGGLED, 400),
    (b"POST /heartbeat HTTP/1.1\r\nHost: localhost\r\nContent-Length: \xc2\xb2\r\n"
     b"Expect: 100-continue\r\n\r\n" + SMUGGLED, 400),
    (b"POST /agents HTTP/1.1\r\nHost: localhost\r\nContent-Length: " + str(len(SMUGGLED)).encode()
     + b"\r\nExpect: 100-continue\r\n\r\n" + SMUGGLED, 405),
])
def test_a_body_that_cannot_be_framed_closes_the_connection(token_daemon, first, status):
    d = token_daemon
    responses, closed = exchange(d.port, first)
    assert [r.status for r in responses] == [status] and closed
    assert responses[0].headers["connection"] == "close"
    assert d.agent("db-1") is not None


def test_expect_continue_is_answered_only_for_an_acceptable_request(token_daemon):
    d = token_daemon
    body = beat("ec-1")
    head = (b"POST /heartbeat HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n")
    responses, _ = exchange(d.port, head + body)
    assert [r.status for r in responses] == [100, 200]
    responses, closed = exchange(d.port, head.replace(TOKEN.encode(), b"nope"))
    assert [r.status for r in responses] == [401] and closed  # no 100: the body is not wanted


# -- browsers cannot act -------------------------------------------------------------------

def test_a_web_page_of_another_origin_cannot_post_or_delete(daemon_factory):
    d = daemon_factory().start()
    form = (("Content-Type", "text/plain"),)
    for origin in ("http://evil.example", "null", "http://127.0.0.1:1"):
        (resp,), _ = exchange(d.port, request("POST", "/heartbeat", beat("forged"),
                                              headers=form + (("Origin", origin),)))
        assert resp.status == 403, origin
    assert d.agent("forged") is None
    d.post(json.loads(beat("kept")))
    d.wait_state("kept", "healthy")
    (resp,), _ = exchange(d.port, request("DELETE", "/agents/kept",
                                          headers=(("Origin", "http://evil.example"),)))
    assert resp.status == 403 and d.agent("kept") is not None
    host = f"127.0.0.1:{d.port}"  # the status page itself (same origin) may
    (resp,), _ = exchange(d.port, request("DELETE", "/agents/kept", host=host,
                                          headers=(("Origin", f"http://{host}"),)))
    assert resp.status == 200
    # curl -d '{...}' without -H: a form content type and no Origin keeps working
    (resp,), _ = exchange(d.port, request("POST", "/heartbeat", beat("curl"), headers=(
        ("Content-Type", "application/x-www-form-urlencoded"),)))
    assert resp.status == 200


@pytest.mark.parametrize("host,status", [
    ("evil.example", 421), ("evil.example:8690", 421), ("127.0.0.1.nip.io", 421), ("10.0.0.1", 421),
    ("localhost", 200), ("LOCALHOST:8690", 200), ("127.0.0.1", 200), ("127.1.2.3:80", 200),
    ("[::1]:8690", 200), ("[::ffff:127.0.0.1]", 200),
])
def test_a_rebound_name_gets_421_on_a_loopback_listener(daemon_factory, host, status):
    d = daemon_factory().start()
    (resp,), _ = exchange(d.port, request("GET", "/agents", host=host))
    assert resp.status == status
    (resp,), _ = exchange(d.port, request("GET", f"http://{host}/agents", host="localhost"))
    assert resp.status == status  # the absolute form's authority is the host


# -- an agent id is held by its source -----------------------------------------------------

def test_http_cannot_speak_for_an_agent_held_by_a_unix_connection(daemon_factory):
    d = daemon_factory().start()
    agent = d.unix_agent("db-1", interval=0.1)
    d.wait_state("db-1", "healthy")
    for doc in ({"pid": 1}, {"pid": agent.pid, "status": "stopping"}, {"pid": os.getpid()}):
        status, _, body = d.post({"agent_id": "db-1", **doc})
        assert status == 409 and "held" in body["message"]
    rec = d.agent("db-1")
    assert (rec["transport"], rec["pid"], rec["state"], rec["connected"]) == \
        ("unix", agent.pid, "healthy", True)
    conflicts = d.wait_events("db-1", lambda e: e["kind"] == "id_conflict")
    assert len(conflicts) == 1 and "HTTP client 127.0.0.1" in conflicts[0]["reason"]
    assert d.get("/stats")[2]["errors_by_reason"]["id_conflict"] == 3
    agent.kill()
    d.wait_state("db-1", "dead", timeout=1.0)
    agent.wait(5)


def test_a_second_unix_connection_cannot_take_a_held_id(daemon_factory):
    d = daemon_factory().start()
    real = d.unix_agent("db-1", interval=0.1)
    twin = d.unix_agent("db-1", interval=0.05)  # another process claiming the same id
    wait_for(lambda: d.get("/stats")[2]["errors_by_reason"].get("id_conflict", 0) >= 3,
             what="the twin's heartbeats refused")
    assert d.agent("db-1")["pid"] == real.pid
    conflicts = d.wait_events("db-1", lambda e: e["kind"] == "id_conflict")
    assert len(conflicts) == 1 and "Unix connection of uid" in conflicts[0]["reason"]
    assert d.log().count("sent heartbeats for this id") == 1  # logged once, not per line
    real.kill()
    wait_for(lambda: any(e["to"] == "dead" for e in d.events("db-1")), timeout=1.0,
             what="the real agent's crash seen as dead")
    real.wait(5)
    twin.send_signal(signal.SIGTERM)  # the id is free now: the twin may speak for it
    twin.wait(5)
    rec = d.wait_state("db-1", "stopped")
    assert rec["pid"] == twin.pid


def test_per_agent_tokens_speak_only_for_their_globs(daemon_factory, short_tmp):
    paths = {}
    for name, secret in (("admin", "adm1n"), ("team-a", "t0k-a"), ("team-b", "t0k-b")):
        paths[name] = os.path.join(short_tmp, name)
        with open(paths[name], "w") as f:
            f.write(secret)
    d = daemon_factory(http={"auth_token_file": paths["admin"], "tokens": [
        {"token_file": paths["team-a"], "agents": ["a-*"]},
        {"token_file": paths["team-b"], "agents": ["b-*", "shared"]}]}).start()

    def post(agent_id, secret):
        return d.post(json.loads(beat(agent_id)), {"Authorization": f"Bearer {secret}"})[0]
    assert post("a-1", "t0k-a") == 200 and post("b-1", "t0k-b") == 200
    assert post("shared", "t0k-b") == 200 and post("c-1", "adm1n") == 200
    assert post("b-2", "t0k-a") == 403 and post("a-2", "t0k-b") == 403
    assert post("a-3", "wrong") == 401 and d.post(json.loads(beat("a-3")))[0] == 401
    d.wait_state("b-1", "healthy")
    assert d.request("DELETE", "/agents/b-1", headers={"Authorization": "Bearer t0k-a"})[0] == 403
    assert d.request("DELETE", "/agents/b-1", headers={"Authorization": "Bearer t0k-b"})[0] == 200
    assert d.agent("a-2") is None and d.agent("b-2") is None
    assert "does not speak for agent b-2" in d.log()


# -- bounds ----------------------------------------------------------------------------------

def test_a_full_table_refuses_new_ids_and_keeps_known_ones(daemon_factory):
    d = daemon_factory(agent={"max_agents": 3, "new_agents_per_minute": 0}).start()
    known = d.unix_agent("known", interval=0.1)
    for agent_id in ("h-1", "h-2"):
        assert d.post(json.loads(beat(agent_id)))[0] == 200
    wait_for(lambda: len(d.get("/agents")[2]["agents"]) == 3, what="three agents")
    status, headers, body = d.post(json.loads(beat("h-3")))
    assert status == 429 and headers["Retry-After"] == "60"
    sock = d.unix_send(beat("u-4") + b"\n")
    wait_for(lambda: d.get("/stats")[2]["errors_by_reason"].get("max_agents") == 2,
             what="both new ids counted as max_agents")
    assert d.post(json.loads(beat("h-1")))[0] == 200  # known ids keep working
    assert d.agent("h-3") is None and d.agent("u-4") is None
    known.kill()
    d.wait_state("known", "dead", timeout=1.0)
    known.wait(5)
    sock.close()


def test_one_source_cannot_create_more_than_its_share_of_new_ids(daemon_factory):
    d = daemon_factory(agent={"new_agents_per_minute": 5}).start()
    answers = [d.post(json.loads(beat(f"r-{i}")))[0] for i in range(8)]
    assert answers == [200] * 5 + [429] * 3
    assert d.post(json.loads(beat("r-0")))[0] == 200  # a known id is no new one
    sock = d.unix_send(b"".join(beat(f"u-{i}") + b"\n" for i in range(8)))
    wait_for(lambda: d.get("/stats")[2]["errors_by_reason"].get("rate_limited") == 6,
             what="the socket's extra ids refused")
    assert sum(1 for a in d.get("/agents")[2]["agents"] if a["agent_id"].startswith("u-")) == 5
    sock.close()


def test_silent_agents_are_forgotten_after_forget_silent_after(daemon_factory):
    d = daemon_factory(agent={"health_check": {"heartbeat_timeout": "0.3s",
                                               "forget_silent_after": "1s"}}).start()
    d.post(json.loads(beat("quiet", pid=1)))  # pid 1 lives on: no_heartbeat, not dead
    d.wait_state("quiet", "no_heartbeat")
    wait_for(lambda: d.agent("quiet") is None, timeout=5, what="the silent agent forgotten")
    forgotten = d.wait_events("quiet", lambda e: e["kind"] == "forgotten")
    assert "no_heartbeat" in forgotten[0]["reason"]
    assert 'agent_id="quiet"' not in d.get("/metrics")[2]


def test_delete_is_recorded_with_who_asked_and_frees_the_metric_series(daemon_factory):
    d = daemon_factory().start()
    d.post(json.loads(beat("gone-1")))
    d.wait_state("gone-1", "healthy")
    assert 'agent_id="gone-1"' in d.get("/metrics")[2]
    assert d.request("DELETE", "/agents/gone-1")[0] == 200
    assert 'agent_id="gone-1"' not in d.get("/metrics")[2]
    (event,) = d.wait_events("gone-1", lambda e: e["kind"] == "forgotten")
    assert event["reason"] == "forgotten on request by DELETE from 127.0.0.1"


# -- no input raises ---------------------------------------------------------------------------

@pytest.mark.parametrize("raw,status", [
    (b"GET http://[/ HTTP/1.1\r\nHost: localhost\r\n\r\n", 421),
    (b"GET http://[x]/healthz HTTP/1.1\r\nHost: localhost\r\n\r\n", 421),
    (b"GET /healthz HTTP/2.0\r\n\r\n", 505),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    (b"GET /%ff%fe HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
    (b"get /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n", 405),
    (b"OPTIONS /agents HTTP/1.1\r\nHost: localhost\r\n\r\n", 405),
    (b"BREW /heartbeat HTTP/1.1\r\nHost: localhost\r\n\r\n", 405),
    (b"GET agents HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
])
def test_malformed_requests_get_a_clean_json_answer(daemon_factory, raw, status):
    d = daemon_factory().start()
    (resp, *_), _ = exchange(d.port, raw)
    assert resp.status == status
    assert json.loads(resp.body)["success"] is False
    if status == 405:
        assert resp.headers["allow"]
    assert d.get("/healthz")[0] == 200
    assert "Traceback" not in d.log()


def test_head_is_served_like_get_without_a_body(daemon_factory):
    d = daemon_factory().start()
    (resp,), _ = exchange(d.port, request("HEAD", "/healthz"))
    assert resp.status == 200 and int(resp.headers["content-length"]) > 0 and resp.body == b""


def test_a_huge_integer_keeps_the_agent_judged_on_its_connection(daemon_factory):
    d = daemon_factory().start()
    line = (b'{"agent_id":"big","pid":' + str(os.getpid()).encode() + b',"cpu":1' + b"0" * 309
            + b',"memory":2048}\n')
    sock = d.unix_send(line)
    rec = d.wait_state("big", "healthy")
    assert (rec["connected"], rec["cpu"], rec["memory"]) == (True, 0.0, 2048)
    assert d.get("/stats")[2]["warnings_by_reason"] == {"metric_invalid": 1}
    sock.close()
    wait_for(lambda: d.agent("big")["connected"] is False, timeout=1.0, what="connected: false")
    assert "Traceback" not in d.log()


def test_busy_go_agent_heartbeats_prove_liveness_with_a_warning(daemon_factory):
    d = daemon_factory().start()
    status, _, body = d.post(json.loads(beat("go-1", cpu=133.7, memory=1000)))
    assert status == 200 and body["warnings"] == [
        "cpu: 133.7 is over 100 (percent of the machine); clamped to 100"]
    rec = d.wait_state("go-1", "healthy")
    assert rec["cpu"] == 100.0
    status, _, body = d.post(json.loads(beat("go-1", cpu="busy", memory=-1, status="stopping")))
    assert status == 200 and len(body["warnings"]) == 2
    rec = d.wait_state("go-1", "stopped")
    assert (rec["cpu"], rec["memory"]) == (100.0, 1000)  # the previous values stay
    assert 'hbdaemon_heartbeat_warnings_total{transport="http",reason="metric_invalid"} 3' \
        in d.get("/metrics")[2]


# -- a flood from an unprivileged local user -----------------------------------------------------

FLOOD = os.path.join(os.path.dirname(os.path.dirname(__file__)), "support", "flood.py")


def test_a_flood_of_new_ids_from_an_unprivileged_user_drowns_nothing(daemon_factory, short_tmp):
    """200,000 new ids over both transports from uid 65534: the table stays bounded, known
    agents keep being heard, and a known agent's crash is still `dead` at once."""
    require_root("to run the flood as an unprivileged user (setpriv)")
    setpriv = require_tool("setpriv", "util-linux")
    os.chmod(short_tmp, 0o755)  # the unprivileged user must reach the socket
    script = os.path.join(short_tmp, "flood.py")
    shutil.copy(FLOOD, script)
    os.chmod(script, 0o644)
    d = daemon_factory(unix={"socket_mode": "0666"}, log={"level": "info"}).start()
    known_unix = d.unix_agent("known-unix", interval=0.1)
    assert d.post(json.loads(beat("known-http")))[0] == 200
    d.wait_state("known-http", "healthy")
    started = time.monotonic()
    flood = subprocess.Popen([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
                              "/usr/bin/python3", script, d.socket_path, str(d.port),
                              "150000", "50000"], stdout=subprocess.PIPE, text=True)
    during = []
    while flood.poll() is None:  # the known HTTP agent keeps beating through the flood
        during.append(d.post(json.loads(beat("known-http")))[0])
        time.sleep(0.05)
    result = json.loads(flood.stdout.read())
    elapsed = time.monotonic() - started
    assert flood.returncode == 0, result
    assert result["uid"] == 65534 and result["unix_sent"] == 150000
    assert sum(result["http"].values()) == 50000 and set(result["http"]) <= {"200", "429"}
    assert during and set(during) == {200}
    # the socket's lines may still wait for the new-id gate after the sender is done
    wait_for(lambda: sum(d.get("/stats")[2]["errors_by_reason"].values())
             + d.get("/stats")[2]["agents"] - 2 >= 200000, timeout=60, what="every line judged")
    stats = d.get("/stats")[2]
    # agent.new_agents_per_minute (1000) per uid on the socket and per address over HTTP,
    # plus what the two buckets refilled while the flood ran
    allowed = 2 * 1000 * (1 + elapsed / 60)
    assert stats["agents"] <= 2 + allowed, elapsed
    assert stats["errors_by_reason"]["rate_limited"] >= 200000 - allowed
    assert d.agent("known-unix")["peer_uid"] == 0
    beats = d.agent("known-unix")["heartbeats"]
    wait_for(lambda: d.agent("known-unix")["heartbeats"] > beats + 2, what="known agent heard")
    known_unix.kill()
    d.wait_state("known-unix", "dead", timeout=1.0)
    known_unix.wait(5)
    assert "Traceback" not in d.log()
    assert 0 < d.log().count("too many new") < 20  # refusals are logged, not one line each


@pytest.mark.parametrize("line", [b"X", b"Bad Name: x", b"Content-Length : 24", b"X-A: a\rb",
                                  b"X-A: \r"])
def test_a_malformed_header_line_is_refused_not_the_end_of_the_headers(daemon_factory, line):
    d = daemon_factory().start()
    smuggled = b"GET /agents HTTP/1.1\r\nHost: localhost\r\n\r\n"
    responses, closed = exchange(d.port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n" + line
                                 + b"\r\nContent-Length: 41\r\nHost: evil.example\r\n\r\n" + smuggled)
    assert [r.status for r in responses] == [400] and closed


@pytest.mark.parametrize("head,status", [
    # with Host and Content-Length, 100 lines: http.client's bound, its blank line counted
    (b"".join(b"X-%d: v\r\n" % n for n in range(98)), 431),
    (b"Content-Type: multipart/form-data\r\n", 400),         # the email parser's defect
    (b"Content-Type: Message/rfc822; x=1\r\n", 400),         # its payload
])
def test_heads_the_stdlib_refuses_are_refused_whichever_parser_reads_them(daemon_factory,
                                                                         head, status):
    """Found by an attack on the plain-head reader: heads it took that http.server's parser
    refuses, each followed here by a pipelined request that must not be answered."""
    d = daemon_factory().start()
    body = beat("plain-1", pid=os.getpid())
    responses, closed = exchange(d.port, b"POST /heartbeat HTTP/1.1\r\nHost: localhost\r\n"
                                 + head + b"Content-Length: %d\r\n\r\n" % len(body) + body
                                 + b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert [r.status for r in responses] == [status] and closed
    assert d.get("/agents/plain-1")[0] == 404


def test_a_report_with_hostile_relayed_lists_still_proves_its_sender_alive(daemon_factory):
    """Found by a review: an entry whose state was a list raised TypeError in the parser,
    and the heartbeat (HTTP, Unix alike) was lost with a traceback."""
    d = daemon_factory().start()
    hostile = {"summary": {}, "events": [{"agent_id": "x", "to": [1], "reason": "",
                                          "time": "2026-11-28T10:00:00Z"}],
               "problems": [{"agent_id": "y", "state": {}, "reason": "",
                             "since": "2026-11-28T10:00:00Z"}]}
    status, _, answer = d.post(dict(hostile, agent_id="host-h", pid=os.getpid()))
    assert status == 200 and len(answer["warnings"]) == 2
    sock = d.unix_send(json.dumps(dict(hostile, agent_id="host-u", pid=os.getpid())).encode()
                       + b"\n")
    try:
        assert d.wait_state("host-u", "healthy")["connected"]
    finally:
        sock.close()
    assert d.state("host-h") == "healthy" and "Traceback" not in d.log()
    assert d.get("/agents?match=host-*:*")[2]["agents"] == []  # nothing relayed from them


def test_many_bad_connections_cannot_flood_the_log(daemon_factory):
    d = daemon_factory().start()
    for i in range(60):
        d.unix_send(b"not json\n" if i % 2 else beat("x", pid=1) + b"\n", wait=0).close()
    wait_for(lambda: d.get("/stats")[2]["errors_by_reason"].get("pid_mismatch") == 30,
             what="every bad line counted")
    warnings = [line for line in d.log().splitlines() if " WARNING " in line]
    assert 0 < len([w for w in warnings if "closing connection" in w]) <= 2
    assert 0 < len([w for w in warnings if "says pid 1" in w]) <= 2

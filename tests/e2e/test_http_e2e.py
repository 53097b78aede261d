"""The real daemon's HTTP receiver and API: every answer code, keep-alive, auth."""

import http.client
import json
import os
import socket

import pytest

from support.wait import wait_for


def beat(agent_id="h1", **fields):
    return {"agent_id": agent_id, "pid": os.getpid(), **fields}


def test_accepted_heartbeat_shows_in_the_api(daemon_factory):
    d = daemon_factory().start()
    status, _, body = d.post(beat(version="2.0", cpu=12.5, memory=1000,
                                  timestamp="2026-11-27T20:35:24.456284565Z"))
    assert status == 200 and body["success"] is True and body["timestamp"].endswith("Z")
    rec = d.wait_state("h1", "healthy")
    assert (rec["transport"], rec["version"], rec["cpu"], rec["memory"], rec["remote"]) == \
        ("http", "2.0", 12.5, 1000, "127.0.0.1")
    assert d.get("/agents")[2]["agents"][0]["agent_id"] == "h1"
    stats = d.get("/stats")[2]
    for key in ("total_received", "total_processed", "total_errors", "last_received_time", "average_latency"):
        assert key in stats
    assert stats["total_processed"] == 1 and stats["average_latency"] > 0


@pytest.mark.parametrize("body,field", [
    ("{not json", None), (json.dumps({"pid": 1}), "agent_id"),
    (json.dumps({"agent_id": "x", "pid": 0}), "pid"), ('{"agent_id":"x","pid":1,"cpu":NaN}', None),
])
def test_invalid_heartbeats_are_400_naming_the_field(daemon_factory, body, field):
    d = daemon_factory().start()
    status, _, doc = d.request("POST", "/heartbeat", body)
    assert status == 400 and doc["success"] is False
    if field:
        assert doc["message"].startswith(field + ":")


def test_wrong_method_is_405_unknown_path_404(daemon_factory):
    d = daemon_factory().start()
    status, headers, _ = d.get("/heartbeat")
    assert status == 405 and headers["Allow"] == "POST"
    assert d.request("PUT", "/heartbeat", "{}")[0] == 405
    assert d.request("POST", "/agents", "{}")[0] == 405
    assert d.get("/nope")[0] == 404
    assert d.get("/agents/nobody")[0] == 404


def test_oversized_body_is_413_without_reading_it(daemon_factory):
    d = daemon_factory().start()
    s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
    s.sendall(b"POST /heartbeat HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n")
    reply = s.recv(4096).decode()
    assert reply.startswith("HTTP/1.1 413") and "Connection: close" in reply
    s.close()
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=5)
    conn.request("POST", "/heartbeat", body=b"x" * 70000, headers={"Expect": "100-continue"})
    assert conn.getresponse().status == 413
    s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
    s.sendall(b"POST /heartbeat HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n")
    assert s.recv(4096).startswith(b"HTTP/1.1 413")
    s.close()
    assert d.post(beat())[0] == 200  # still serving


def test_missing_content_length_is_411(daemon_factory):
    d = daemon_factory().start()
    s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
    s.sendall(b"POST /heartbeat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert s.recv(4096).startswith(b"HTTP/1.1 411")
    s.close()


def test_token_is_required_for_post_and_delete_when_configured(daemon_factory, short_tmp):
    token_file = os.path.join(short_tmp, "token")
    with open(token_file, "w") as f:
        f.write("s3cret\n")
    d = daemon_factory(http={"auth_token_file": token_file}).start()
    assert d.post(beat())[0] == 401
    assert d.post(beat(), {"Authorization": "Bearer wrong"})[0] == 401
    assert d.post(beat(), {"Authorization": "Bearer s3cret"})[0] == 200
    d.wait_state("h1", "healthy")
    assert d.get("/agents/h1")[0] == 200  # reads stay open
    assert d.request("DELETE", "/agents/h1")[0] == 401
    assert d.request("DELETE", "/agents/h1", headers={"Authorization": "Bearer s3cret"})[0] == 200
    assert d.get("/agents/h1")[0] == 404


def test_keep_alive_serves_many_heartbeats_on_one_connection(daemon_factory):
    d = daemon_factory().start()
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=5)
    for i in range(50):
        conn.request("POST", "/heartbeat", body=json.dumps(beat("ka", cpu=float(i))))
        resp = conn.getresponse()
        assert resp.status == 200
        resp.read()
    conn.close()
    # each applied, or superseded by a later one two workers took at once: never reordered
    wait_for(lambda: d.agent("ka") and d.agent("ka")["heartbeats"]
             + d.get("/stats")[2]["errors_by_reason"].get("superseded", 0) == 50,
             what="50 heartbeats")
    assert d.agent("ka")["cpu"] == 49.0  # the last one sent
    # the closed connection leaves the table once its thread sees the EOF
    wait_for(lambda: d.get("/stats")[2]["http_connections"] <= 1, what="the closed connection gone")


def test_over_threshold_through_http(daemon_factory):
    d = daemon_factory(agent={"health_check": {"cpu_threshold": 10, "threshold_duration": 0,
                                               "recovery_count": 1}}).start()
    d.post(beat("hot", cpu=50.0))
    rec = d.wait_state("hot", "over_threshold")
    assert rec["reason"].startswith("cpu 50.0% > 10%")
    d.post(beat("hot", cpu=1.0))
    d.wait_state("hot", "healthy")


def test_events_query_and_metrics(daemon_factory):
    d = daemon_factory().start()
    d.post(beat("e1"))
    d.post(beat("e2"))
    d.wait_state("e2", "healthy")
    d.wait_events("e2", lambda e: e["to"] == "healthy")  # shown once written
    events = d.get("/events?agent=e1")[2]["events"]
    assert [(e["agent_id"], e["from"], e["to"]) for e in events] == [("e1", "unknown", "healthy")]
    assert set(events[0]) >= {"time", "agent_id", "from", "to", "reason"}
    assert d.get("/events?since=1m")[2]["events"]
    assert d.get("/events?since=2999-01-01T00:00:00Z")[2]["events"] == []
    assert d.get("/events?since=soon")[0] == 400
    status, headers, text = d.get("/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert 'hbdaemon_agent_state{agent_id="e1",state="healthy"} 1' in text
    assert 'hbdaemon_heartbeats_processed_total{transport="http"} 2' in text
    assert d.get("/healthz")[2] == {"status": "ok"}


def test_slow_client_times_out_without_holding_the_daemon(daemon_factory):
    d = daemon_factory(http={"idle_timeout": "0.5s"}).start()
    s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
    s.sendall(b"POST /heartbeat HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")  # never finishes
    assert d.post(beat("other"))[0] == 200
    reply = b""
    while True:  # the daemon gives up after its idle timeout: a 400, then the connection ends
        chunk = s.recv(4096)
        if not chunk:
            break
        reply += chunk
    assert reply.startswith(b"HTTP/1.1 400") and b"body shorter than Content-Length" in reply
    s.close()
    idle = socket.create_connection(("127.0.0.1", d.port), timeout=5)
    assert idle.recv(1) == b""  # a connection that never sends is closed too
    idle.close()


def test_clients_holding_unfinished_requests_cannot_lock_others_out(daemon_factory):
    d = daemon_factory(http={"max_connections": 4}).start()
    slow = []
    for _ in range(8):  # slowloris: a request head that never ends
        s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-A: 1\r\n")
        slow.append(s)
    for _ in range(5):
        assert d.get("/healthz")[0] == 200
        assert d.post(beat("through"))[0] == 200
    assert d.get("/stats")[2]["connections_evicted"] >= 4
    for s in slow:
        s.close()


def test_a_huge_request_head_is_431_not_memory(daemon_factory):
    d = daemon_factory().start()
    s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n" + b"X-Pad: " + b"v" * 20000 + b"\r\n\r\n")
    reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 431") and b"Connection: close" in reply
    s.close()

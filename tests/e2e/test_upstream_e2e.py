"""Fleet reporting: a downstream hbdaemon reports itself and its agents to an upstream one."""

import os
import signal
import subprocess
import sys
import time

from support.wait import wait_for


def fleet(daemon_factory, **upstream_health):
    up = daemon_factory("up", agent={"health_check": {"heartbeat_timeout": "1.5s", **upstream_health}}).start()
    down = daemon_factory("down", manager={"url": f"http://127.0.0.1:{up.port}", "agent_id": "host-b",
                                           "heartbeat_interval": "0.3s", "reconnect_interval": "0.2s",
                                           "timeout": "2s"}).start()
    return up, down


def test_upstream_sees_the_downstream_and_its_summary(daemon_factory):
    up, down = fleet(daemon_factory)
    assert down.post({"agent_id": "app-1", "pid": os.getpid()})[0] == 200
    rec = up.wait_state("host-b", "healthy")
    assert rec["pid"] == down.proc.pid and rec["version"].startswith("hbdaemon-")
    wait_for(lambda: (up.agent("host-b")["summary"] or {}).get("healthy") == 1, what="summary")
    out = subprocess.run([sys.executable, "-m", "hbdaemon.ctl", "--url", f"http://127.0.0.1:{up.port}",
                          "status"], capture_output=True, text=True, timeout=30).stdout
    assert "ITS AGENTS" in out and "1 healthy" in out


def test_downstream_reconnects_after_the_upstream_restarts(daemon_factory):
    up, down = fleet(daemon_factory)
    up.wait_state("host-b", "healthy")
    up.proc.kill()
    up.proc.wait(5)
    wait_for(lambda: "upstream" in down.log() and "lost" in down.log(), what="loss logged")
    up.start()
    up.wait_state("host-b", "healthy", timeout=5)
    wait_for(lambda: "reconnected after" in down.log(), what="reconnect logged")
    assert down.log().count("lost:") == 1


def test_a_silent_downstream_is_no_heartbeat_and_a_stopped_one_stopped(daemon_factory):
    up, down = fleet(daemon_factory)
    up.wait_state("host-b", "healthy")
    down.signal(signal.SIGSTOP)  # hung: alive but silent
    try:
        up.wait_state("host-b", "no_heartbeat", timeout=5)
    finally:
        down.signal(signal.SIGCONT)
    up.wait_state("host-b", "healthy", timeout=5)
    assert down.stop() == 0
    up.wait_state("host-b", "stopped", timeout=5)


def test_a_killed_downstream_on_this_host_is_dead_after_the_timeout(daemon_factory):
    up, down = fleet(daemon_factory)
    up.wait_state("host-b", "healthy")
    down.proc.kill()
    down.proc.wait(5)
    rec = up.wait_state("host-b", "dead", timeout=10)  # same host: its pid is seen gone
    assert rec["reason"].startswith("no heartbeat for")


def test_an_upstream_that_does_not_speak_http_is_a_failed_report_not_a_dead_reporter(daemon_factory):
    import socket
    import threading
    banner = socket.socket()
    banner.bind(("127.0.0.1", 0))
    banner.listen(16)
    done = threading.Event()

    def serve():  # what sshd answers on a wrong port
        banner.settimeout(0.2)
        while not done.is_set():
            try:
                conn, _ = banner.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")

    threading.Thread(target=serve, daemon=True).start()
    try:
        down = daemon_factory("down", manager={
            "url": f"http://127.0.0.1:{banner.getsockname()[1]}", "heartbeat_interval": "0.2s",
            "reconnect_interval": "0.1s", "timeout": "1s"}).start()
        wait_for(lambda: "lost:" in down.log(), what="the failure logged")
        time.sleep(0.5)  # several more failed attempts
        assert "Traceback" not in down.log() and down.log().count("lost:") == 1
        status, _, doc = down.get("/healthz")
        assert status == 200, doc
        assert 'hbdaemon_component_restarts_total{component="hb-upstream"} 0' in down.get("/metrics")[2]
    finally:
        done.set()
        banner.close()


def _serve_raw(answer):
    """A TCP server on loopback that runs answer(conn) for each connection; (port, stop)."""
    import socket
    import threading
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    done = threading.Event()

    def loop():
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            threading.Thread(target=answer, args=(conn, done), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()

    def stop():
        done.set()
        listener.close()
    return listener.getsockname()[1], stop


def _endless(conn, done):
    with conn:
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n")
            while not done.is_set():
                conn.sendall(b"x" * 65536)
        except OSError:
            pass


def _trickle(conn, done):
    with conn:
        try:
            conn.recv(65536)
            for _ in range(600):
                if done.is_set():
                    return
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n"[:1])
                time.sleep(0.1)
        except OSError:
            pass


def test_a_hostile_upstream_can_neither_fill_the_memory_nor_hang_the_reporter(daemon_factory):
    import psutil
    for answer in (_endless, _trickle):
        port, stop = _serve_raw(answer)
        try:
            down = daemon_factory(f"down-{answer.__name__}", manager={
                "url": f"http://127.0.0.1:{port}", "heartbeat_interval": "0.2s",
                "reconnect_interval": "0.2s", "timeout": "1s"}).start()
            if answer is _trickle:  # the endless answer's first 4 KiB say 200: a report made
                wait_for(lambda: "lost:" in down.log(), what="the failed report logged")
            deadline = time.monotonic() + 4.0
            while time.monotonic() < deadline:  # reports keep failing, and keep being tried
                assert psutil.Process(down.proc.pid).memory_info().rss < 300e6
                assert down.get("/healthz")[0] == 200, down.get("/healthz")[2]
                time.sleep(0.5)
            assert "Traceback" not in down.log()
        finally:
            stop()


def test_a_downstream_agent_s_crash_and_recovery_reach_the_upstream_at_once(daemon_factory):
    up = daemon_factory("up").start()
    down = daemon_factory("down", manager={  # a report a minute: the crash goes up by itself
        "url": f"http://127.0.0.1:{up.port}", "agent_id": "host-b",
        "heartbeat_interval": "60s", "reconnect_interval": "0.2s", "timeout": "2s"}).start()
    up.wait_state("host-b", "healthy")
    db = down.unix_agent("db-1", interval=0.1)
    down.wait_state("db-1", "healthy")
    db.kill()
    db.wait(5)
    down.wait_state("db-1", "dead")
    relayed = up.wait_state("host-b:db-1", "dead", timeout=3)
    assert relayed["transport"] == "relay" and relayed["relayed_by"] == "host-b"
    assert "reported by host-b" in relayed["reason"]
    assert [e["to"] for e in up.wait_events("host-b:db-1", lambda e: True)] == ["dead"]
    # the relayed id is the downstream's to set: a heartbeat for it is refused
    status, _, body = up.post({"agent_id": "host-b:db-1", "pid": os.getpid()})
    assert status == 409 and "relayed" in body["message"]

    db = down.unix_agent("db-1", interval=0.1)  # it comes back: the upstream lets it go
    down.wait_state("db-1", "healthy")
    wait_for(lambda: up.get("/agents/host-b:db-1")[0] == 404, 3, what="the relayed agent dropped")
    up.wait_events("host-b:db-1", lambda e: e["to"] == "healthy")
    assert [e["to"] for e in up.events("host-b:db-1")] == ["dead", "healthy"]
    db.kill()
    db.wait(5)


def test_relayed_problems_survive_an_upstream_restart_and_go_with_their_daemon(daemon_factory):
    up = daemon_factory("up").start()
    down = daemon_factory("down", manager={
        "url": f"http://127.0.0.1:{up.port}", "agent_id": "host-b",
        "heartbeat_interval": "0.3s", "reconnect_interval": "0.2s", "timeout": "2s"}).start()
    db = down.unix_agent("db-1", interval=0.1)
    down.wait_state("db-1", "healthy")
    db.kill()
    db.wait(5)
    up.wait_state("host-b:db-1", "dead", timeout=3)
    assert up.stop() == 0
    up.start()
    assert up.state("host-b:db-1") == "dead"  # as its daemon last said, not unknown
    assert up.request("DELETE", "/agents/host-b")[0] == 200
    wait_for(lambda: up.get("/agents/host-b:db-1")[0] == 404 or up.state("host-b") == "healthy",
             3, what="the relayed agent forgotten with its daemon")
    # the daemon comes back at its next report, with its failing agent: kept again
    up.wait_state("host-b:db-1", "dead", timeout=3)


def test_a_report_with_hostile_relay_fields_still_counts_as_a_heartbeat(daemon_factory):
    up = daemon_factory("up").start()
    now = "2026-11-28T10:00:00Z"
    for events, problems in (
            ([{"agent_id": "db/1", "to": "dead", "time": now}], None),
            ("x", [{"agent_id": "a", "state": "healthy", "since": now}]),
            ([{"agent_id": "a", "to": "dead", "time": now, "reason": "r" * 300}] * 2, [1]),
            ([{"agent_id": "a", "to": "dead", "time": now}] * 101, None)):
        status, _, body = up.post({"agent_id": "host-x", "pid": os.getpid(), "summary": {},
                                   "events": events, "problems": problems})
        assert status == 200 and body["warnings"], body
    assert [a["agent_id"] for a in up.get("/agents")[2]["agents"]] == ["host-x"]
    long_id = "h" * 120  # its agents' relayed ids would pass 128 characters: not kept
    status, _, _ = up.post({"agent_id": long_id, "pid": os.getpid(), "summary": {},
                            "problems": [{"agent_id": "db-1234567", "state": "dead",
                                          "since": now, "reason": ""}]})
    assert status == 200
    time.sleep(0.3)
    assert sorted(a["agent_id"] for a in up.get("/agents")[2]["agents"]) == [long_id, "host-x"]
    # a plain agent that is no daemon (no summary) relays nothing
    assert up.post({"agent_id": "app", "pid": os.getpid(), "problems": [
        {"agent_id": "db-1", "state": "dead", "since": now, "reason": ""}]})[0] == 200
    time.sleep(0.3)
    assert up.get("/agents/app:db-1")[0] == 404


def test_an_ha_pair_of_upstreams_each_get_every_report(daemon_factory):
    ups = [daemon_factory(f"up-{n}").start() for n in (1, 2)]
    down = daemon_factory("down", manager={
        "url": [f"http://127.0.0.1:{up.port}" for up in ups], "agent_id": "host-b",
        "heartbeat_interval": "60s", "reconnect_interval": "0.2s", "timeout": "2s"}).start()
    ups[1].stop()  # one of the pair is down: the other hears everything meanwhile
    db = down.unix_agent("db-1", interval=0.1)
    down.wait_state("db-1", "healthy")
    db.kill()
    db.wait(5)
    ups[0].wait_state("host-b:db-1", "dead", timeout=3)
    ups[1].start()  # back: the report retried every reconnect_interval brings it up to date
    assert ups[1].wait_state("host-b:db-1", "dead", timeout=5)["relayed_by"] == "host-b"
    assert down.get("/stats")[2]["upstream_changes_waiting"] == 0


def test_a_downstream_restart_keeps_the_upstream_s_alerts_and_udp_carries_many_problems(
        daemon_factory, short_tmp):
    from test_udp_e2e import agent_key, udp_daemon
    up = udp_daemon(daemon_factory, short_tmp)
    down = daemon_factory("down", manager={
        "url": f"udp://127.0.0.1:{up.udp_port}", "key_file": agent_key(short_tmp),
        "agent_id": "host-c", "heartbeat_interval": "0.5s"}).start()
    long = "x" * 100  # ids that fill a datagram in a few
    for n in range(30):
        assert down.post({"agent_id": f"{long}-{n}", "pid": os.getpid(),
                          "status": "exited", "exit_code": 3})[0] == 200
    wait_for(lambda: sum(a.get("relayed_by") == "host-c"
                         for a in up.get("/agents?limit=1000")[2]["agents"]) == 30, 10,
             what="all 30 relayed over UDP")
    assert down.get("/stats")[2]["upstream_changes_waiting"] == 0
    assert down.stop() == 0  # a restart of the host's daemon: its agents are unknown a while
    down.start()
    time.sleep(2)  # several reports
    states = {a["agent_id"]: a["state"] for a in up.get("/agents?limit=1000")[2]["agents"]}
    assert sum(s == "dead" for a, s in states.items() if a.startswith("host-c:")) == 30
    assert not [e for e in up.events() if e["agent_id"].startswith("host-c:")
                and e["to"] != "dead"]  # nothing resolved in between

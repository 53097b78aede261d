"""The real daemon over its real Unix socket: formats, crash detection, bad input."""

import json
import os
import signal
import subprocess
import time

from support.tools import require_tool
from support.wait import wait_for

GO_LINES = [
    '{{"pid":{pid},"timestamp":"2026-11-27T20:35:24.456284565Z","version":"go-1.0.0","status":"running","cpu":0,"memory":4980736}}\n',
    '{{"pid":{pid},"timestamp":"2026-11-27T20:35:26.755979818Z","version":"go-1.0.0","status":"stopping","cpu":0,"memory":5394432}}\n',
]


def test_go_agent_format_is_named_by_program_and_stopping_then_close_is_stopped(daemon_factory):
    d = daemon_factory().start()
    pid = os.getpid()
    s = d.unix_send(GO_LINES[0].format(pid=pid).encode())
    agent_id = d.id_of(pid)
    assert agent_id.endswith(f"@uid{os.getuid()}")
    rec = d.wait_state(agent_id, "healthy")
    assert (rec["version"], rec["memory"], rec["transport"], rec["connected"]) == ("go-1.0.0", 4980736, "unix", True)
    assert rec["agent_time"] == "2026-11-27T20:35:24.456Z"
    s.sendall(GO_LINES[1].format(pid=pid).encode())
    d.wait_state(agent_id, "stopped")
    s.close()
    wait_for(lambda: d.agent(agent_id)["connected"] is False, what="the close to be seen")
    assert d.state(agent_id) == "stopped"  # judged at the close: still stopped


def test_an_anonymous_agent_keeps_one_record_across_its_restarts_and_the_daemons(daemon_factory):
    d = daemon_factory().start()
    name = f"unix_agent.py@uid{os.getuid()}"  # the script the interpreter runs, and the uid
    first = d.unix_agent("-", interval=0.2)
    assert d.wait_state(name, "healthy")["pid"] == first.pid
    second = d.unix_agent("-", interval=0.2)  # a second live instance: a record of its own
    assert d.wait_state(f"{name}.2", "healthy")["pid"] == second.pid
    first.terminate()
    first.wait(5)
    d.wait_state(name, "stopped")
    again = d.unix_agent("-", interval=0.2)  # the program restarted: its record again
    wait_for(lambda: d.agent(name)["pid"] == again.pid and d.state(name) == "healthy",
             what="the restarted program to take up its record")
    assert sorted(a["agent_id"] for a in d.get("/agents")[2]["agents"]) == [name, f"{name}.2"]
    for proc in (again, second):
        proc.terminate()
        proc.wait(5)
    d.wait_state(f"{name}.2", "stopped")
    d.stop()
    d.start()
    after = d.unix_agent("-", interval=0.2)  # and after a daemon restart
    wait_for(lambda: d.agent(name)["pid"] == after.pid and d.state(name) == "healthy",
             what="the program to take up its record after a daemon restart")
    assert len(d.get("/agents")[2]["agents"]) == 2
    after.terminate()
    after.wait(5)


def test_the_go_receivers_stats_are_served_at_heartbeat_stats(daemon_factory):
    d = daemon_factory().start()
    status, _, doc = d.get("/heartbeat/stats")
    assert status == 200 and doc == {"total_received": 0, "total_processed": 0, "total_errors": 0,
                                     "last_received_time": "0001-01-01T00:00:00Z",
                                     "average_latency": 0}
    s = d.unix_send(GO_LINES[0].format(pid=os.getpid()).encode() + b"{bad\n")
    wait_for(lambda: d.get("/heartbeat/stats")[2]["total_received"] == 2, what="two lines")
    doc = d.get("/heartbeat/stats")[2]
    assert (doc["total_processed"], doc["total_errors"]) == (1, 1)
    assert type(doc["average_latency"]) is int and 0 < doc["average_latency"] < 10**9  # ns
    assert doc["last_received_time"].endswith("Z") and doc["last_received_time"] > "2026"
    s.close()


def test_kill_9_of_a_connected_agent_is_dead_from_its_connection_not_its_timeout(daemon_factory):
    d = daemon_factory().start()
    agent = d.unix_agent("victim", interval=0.2)
    d.wait_state("victim", "healthy")
    killed = time.monotonic()
    agent.kill()
    wait_for(lambda: d.state("victim") == "dead", timeout=5, interval=0.005)
    took = time.monotonic() - killed
    agent.wait(5)
    # seen on the connection, not after the 30 s heartbeat timeout; how fast is measured
    # by bench/bench_crash.py (a loaded CI host must not fail a test on time)
    assert took < 5.0, f"dead after {took:.3f}s"
    (ev,) = d.wait_events("victim", lambda e: e["to"] == "dead")
    assert ev["from"] == "healthy" and "is gone" in ev["reason"]


def test_sigterm_of_the_agent_is_stopped_not_dead(daemon_factory):
    d = daemon_factory().start()
    agent = d.unix_agent("polite", interval=0.2)
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(5) == 0
    d.wait_state("polite", "stopped")
    wait_for(lambda: d.agent("polite")["connected"] is False, what="the close to be seen")
    assert d.state("polite") == "stopped"  # judged at the close: still stopped


def test_silence_is_no_heartbeat_after_the_timeout(daemon_factory):
    d = daemon_factory(agent={"health_check": {"heartbeat_timeout": "0.5s"}}).start()
    s = d.unix_send(json.dumps({"agent_id": "quiet", "pid": os.getpid()}).encode() + b"\n")
    d.wait_state("quiet", "healthy")
    rec = d.wait_state("quiet", "no_heartbeat", timeout=3)
    assert rec["reason"].startswith("no heartbeat for")
    s.close()


def test_close_with_the_process_alive_keeps_the_record(daemon_factory):
    d = daemon_factory().start()
    s = d.unix_send(json.dumps({"agent_id": "alive", "pid": os.getpid()}).encode() + b"\n")
    d.wait_state("alive", "healthy")
    s.close()
    wait_for(lambda: d.agent("alive")["connected"] is False, what="disconnect noticed")
    assert d.state("alive") == "healthy"


def test_pid_mismatch_is_rejected_and_counted(daemon_factory):
    d = daemon_factory().start()
    s = d.unix_send(json.dumps({"agent_id": "liar", "pid": 1}).encode() + b"\n", wait=0.3)
    assert d.agent("liar") is None
    assert d.get("/stats")[2]["errors_by_reason"]["pid_mismatch"] == 1
    s.close()


def test_pid_check_can_be_switched_off_for_other_pid_namespaces(daemon_factory):
    d = daemon_factory(unix={"verify_peer_pid": False}).start()
    s = d.unix_send(json.dumps({"agent_id": "container", "pid": 1}).encode() + b"\n")
    rec = d.wait_state("container", "healthy")
    assert rec["pid"] == 1 and rec["peer_uid"] == os.getuid()
    s.close()


def test_garbage_and_oversized_lines_close_only_that_connection(daemon_factory):
    d = daemon_factory().start()
    good = d.unix_agent("good", interval=0.1)
    garbage = d.unix_send(b"this is not json\n", wait=0.2)
    assert garbage.recv(1) == b""  # the daemon closed it
    huge = d.unix_send(b"{" + b"x" * (70 * 1024), wait=0.2)
    assert huge.recv(1) == b""
    bad_field = d.unix_send(json.dumps({"agent_id": "bf", "pid": str(os.getpid())}).encode() + b"\n")
    stats = d.get("/stats")[2]["errors_by_reason"]
    assert stats["invalid_message"] >= 1 and stats["too_large"] == 1 and stats["invalid_pid"] == 1
    beats = d.agent("good")["heartbeats"]
    wait_for(lambda: d.agent("good")["heartbeats"] > beats + 2, what="good agent keeps beating")
    assert d.state("good") == "healthy"
    for s in (garbage, huge, bad_field):
        s.close()
    good.kill()
    good.wait(5)


def test_idle_connections_are_closed(daemon_factory):
    d = daemon_factory(unix={"idle_timeout": "0.3s"}).start()
    s = d.unix_send(b"", wait=0.0)
    s.settimeout(5)
    assert s.recv(1) == b""
    assert d.get("/stats")[2]["errors_by_reason"]["idle_timeout"] == 1


def test_connection_limit_refuses_extra_connections(daemon_factory):
    d = daemon_factory(unix={"max_connections": 2}).start()
    conns = [d.unix_send(b"", wait=0.05) for _ in range(2)]
    extra = d.unix_send(b"", wait=0.1)
    assert extra.recv(1) == b""
    assert d.get("/stats")[2]["unix_connections"] == 2
    for s in conns + [extra]:
        s.close()


def test_a_plain_socat_client_works(daemon_factory):
    socat = require_tool("socat")
    d = daemon_factory().start()
    # exec keeps the shell's pid, so the heartbeat's pid is the connecting process
    script = ('exec %s - UNIX-CONNECT:%s <<EOF\n{"agent_id":"shell","pid":$$,"status":"stopping"}\nEOF\n'
              % (socat, d.socket_path))
    subprocess.run(["/bin/sh", "-c", script], check=True, timeout=10)
    rec = d.wait_state("shell", "stopped")
    assert rec["transport"] == "unix"


def test_socket_gets_the_configured_mode(daemon_factory):
    d = daemon_factory(unix={"socket_mode": "0600"}).start()
    assert os.stat(d.socket_path).st_mode & 0o777 == 0o600


def test_a_message_of_exactly_64_kib_is_accepted_and_blank_lines_ignored(daemon_factory):
    d = daemon_factory().start()
    doc = {"agent_id": "big", "pid": os.getpid(), "pad": ""}
    doc["pad"] = "x" * (64 * 1024 - len(json.dumps(doc)))
    line = json.dumps(doc).encode()
    assert len(line) == 64 * 1024
    s = d.unix_send(b"\n  \n" + line + b"\n")
    d.wait_state("big", "healthy")
    assert d.get("/stats")[2]["total_errors"] == 0
    s.close()


def test_a_busy_go_agent_stays_healthy_and_its_stopping_line_is_stopped(daemon_factory):
    d = daemon_factory().start()
    pid = os.getpid()
    busy = [line.replace('"cpu":0', '"cpu":' + cpu) for line, cpu in zip(GO_LINES, ("108.5", "133.7"))]
    s = d.unix_send(busy[0].format(pid=pid).encode())
    agent_id = d.id_of(pid)
    rec = d.wait_state(agent_id, "healthy")
    assert rec["cpu"] == 100.0
    s.sendall(busy[1].format(pid=pid).encode())
    d.wait_state(agent_id, "stopped")
    s.close()
    wait_for(lambda: d.agent(agent_id)["connected"] is False, what="the close to be seen")
    assert d.state(agent_id) == "stopped"
    assert d.get("/stats")[2]["warnings_by_reason"] == {"metric_invalid": 2}


def test_hung_past_the_idle_timeout_then_killed_is_dead_at_the_next_checker_pass(daemon_factory):
    d = daemon_factory(unix={"idle_timeout": "0.5s"},
                       agent={"health_check": {"heartbeat_timeout": "0.4s"}}).start()
    agent = d.unix_agent("hung", interval=0.1)
    d.wait_state("hung", "healthy")
    agent.send_signal(signal.SIGSTOP)
    try:
        d.wait_state("hung", "no_heartbeat", timeout=5)
        wait_for(lambda: d.agent("hung")["connected"] is False, timeout=5,
                 what="the idle connection to be closed")
        killed = time.monotonic()
        agent.kill()
        agent.wait(5)
        rec = d.wait_state("hung", "dead", timeout=5)
        assert time.monotonic() - killed < 5.0  # a checker pass, not a restart of the daemon
        assert rec["reason"].startswith(f"process {agent.pid} is gone")
    finally:
        agent.kill()
        agent.wait(5)


def test_a_local_http_agent_that_exits_after_going_silent_is_dead(daemon_factory):
    d = daemon_factory(agent={"health_check": {"heartbeat_timeout": "0.4s"}}).start()
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert d.post({"agent_id": "web", "pid": child.pid})[0] == 200
        d.wait_state("web", "no_heartbeat", timeout=5)
        child.kill()
        child.wait(5)
        rec = d.wait_state("web", "dead", timeout=3)
        assert rec["reason"].startswith(f"process {child.pid} is gone")
    finally:
        child.kill()
        child.wait(5)


def test_out_of_file_descriptors_the_listener_waits_and_recovers(daemon_factory):
    import resource

    def low_limit():  # soft and hard: the daemon cannot raise it
        resource.setrlimit(resource.RLIMIT_NOFILE, (96, 96))

    d = daemon_factory().start(preexec_fn=low_limit)
    assert "is below the" in d.log()  # said at start
    conns = []
    try:
        for i in range(60):  # each costs the daemon a socket and a pidfd
            conns.append(d.unix_send(json.dumps({"agent_id": f"fd-{i}", "pid": os.getpid()}).encode()
                                     + b"\n", wait=0))
        wait_for(lambda: "cannot accept connections" in d.log(), what="the failure logged")
    finally:
        for s in conns:
            s.close()
    wait_for(lambda: d.get("/healthz")[0] == 200, what="the daemon answering again")
    s = d.unix_send(json.dumps({"agent_id": "after", "pid": os.getpid()}).encode() + b"\n")
    d.wait_state("after", "healthy")
    s.close()
    assert "hbdaemon_accept_failures_total" in d.get("/metrics")[2]
    assert "Traceback" not in d.log()

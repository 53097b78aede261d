"""agentd and hbdaemon, both real processes: transports, outages, signals, the library."""

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time

from support.wait import wait_for


def test_unix_agent_is_healthy_with_its_own_numbers(daemon_factory, agentd_factory):
    d = daemon_factory().start()
    a = agentd_factory("u1", d).start()
    rec = d.wait_state("u1", "healthy")
    assert rec["transport"] == "unix" and rec["pid"] == a.proc.pid and rec["memory"] > 1_000_000
    assert rec["version"] == "0.1.0" and rec["status"] in ("starting", "running")
    wait_for(lambda: d.agent("u1")["status"] == "running", what="second heartbeat says running")
    status = a.api("/status")
    assert status["connected"] is True and status["transport"] == "unix" and status["heartbeat_count"] >= 2
    assert a.api("/health")["status"] == "healthy"


def test_http_agent_with_a_token(daemon_factory, agentd_factory, short_tmp):
    token = os.path.join(short_tmp, "token")
    with open(token, "w") as f:
        f.write("t0ken\n")
    d = daemon_factory(http={"auth_token_file": token}).start()
    a = agentd_factory("h1", d, heartbeat={"transport": "http", "auth_token_file": token}).start()
    rec = d.wait_state("h1", "healthy")
    assert rec["transport"] == "http" and rec["pid"] == a.proc.pid
    wait_for(lambda: d.agent("h1")["heartbeats"] >= 3, what="keep-alive heartbeats")


def test_wrong_token_is_a_clear_error(daemon_factory, agentd_factory, short_tmp):
    good, bad = (os.path.join(short_tmp, n) for n in ("good", "bad"))
    for path, text in ((good, "right"), (bad, "wrong")):
        with open(path, "w") as f:
            f.write(text)
    d = daemon_factory(http={"auth_token_file": good}).start()
    a = agentd_factory("h2", d, heartbeat={"transport": "http", "auth_token_file": bad}).start()
    wait_for(lambda: "refused our token (401)" in a.log(), what="401 logged")
    assert d.agent("h2") is None and a.api("/status")["last_error"].startswith("daemon refused our token")


def test_an_id_held_on_the_socket_or_outside_a_scoped_token_is_a_clear_error(
        daemon_factory, agentd_factory, short_tmp):
    scoped = os.path.join(short_tmp, "web")
    with open(scoped, "w") as f:
        f.write("w3b")
    d = daemon_factory(http={"tokens": [{"token_file": scoped, "agents": ["web-*", "db-1"]}]}).start()
    holder = d.unix_agent("db-1", interval=0.1)
    a = agentd_factory("db-1", d, heartbeat={"transport": "http", "auth_token_file": scoped}).start()
    wait_for(lambda: "refused our agent id (409)" in a.log(), what="409 logged")
    assert d.agent("db-1")["pid"] == holder.pid
    b = agentd_factory("cache-1", d, heartbeat={"transport": "http", "auth_token_file": scoped}).start()
    wait_for(lambda: "refused our token for this agent id (403)" in b.log(), what="403 logged")
    assert d.agent("cache-1") is None
    holder.kill()
    holder.wait(5)


def test_agent_started_before_the_daemon_and_status_shows_the_outage(daemon_factory, agentd_factory):
    d = daemon_factory()
    a = agentd_factory("early", d).start()
    wait_for(lambda: a.api("/status")["consecutive_failures"] >= 2, what="failures counted")
    status = a.api("/status")
    assert status["connected"] is False and "cannot connect" in status["last_error"]
    assert a.api("/health")["status"] == "unhealthy"
    d.start()
    started = time.monotonic()
    d.wait_state("early", "healthy", timeout=5)
    # within a few backoff steps (max 0.5 s here), not only at some later beat; the bound
    # is loose on purpose: a loaded CI host must not fail it
    assert time.monotonic() - started < 5.0
    assert a.log().count("lost connection") == 1
    assert "reconnected" in a.log()


def test_daemon_restart_costs_at_most_one_interval(daemon_factory, agentd_factory):
    d = daemon_factory().start()
    a = agentd_factory("survivor", d).start()
    d.wait_state("survivor", "healthy")
    d.wait_events("survivor", lambda e: e["to"] == "healthy")  # written, with its record
    d.proc.kill()
    d.proc.wait(5)
    time.sleep(0.5)
    d.start()
    assert d.state("survivor") in ("unknown", "healthy")
    d.wait_state("survivor", "healthy", timeout=3)
    assert a.api("/status")["connected"] is True
    assert a.proc.poll() is None


def test_sigterm_of_the_agent_is_stopped(daemon_factory, agentd_factory):
    d = daemon_factory().start()
    a = agentd_factory("bye", d).start()
    d.wait_state("bye", "healthy")
    assert a.stop() == 0
    rec = d.wait_state("bye", "stopped")
    assert rec["status"] == "stopping"
    wait_for(lambda: d.agent("bye")["connected"] is False, what="the close to be seen")
    assert d.state("bye") == "stopped"  # judged at the close: still stopped


def test_kill_9_of_a_unix_agent_is_dead_from_its_connection_not_its_timeout(daemon_factory, agentd_factory):
    d = daemon_factory().start()
    a = agentd_factory("crash", d).start()
    d.wait_state("crash", "healthy")
    killed = time.monotonic()
    a.proc.kill()
    wait_for(lambda: d.state("crash") == "dead", timeout=5, interval=0.01)
    # the connection told it (the heartbeat timeout is 30 s); the bound is loose for CI
    assert time.monotonic() - killed < 5.0 and "is gone" in d.agent("crash")["reason"]


def test_kill_9_of_an_http_agent_is_noticed_when_its_heartbeat_is_late(daemon_factory, agentd_factory):
    d = daemon_factory(agent={"health_check": {"heartbeat_timeout": "1.5s"}}).start()
    a = agentd_factory("hcrash", d, heartbeat={"transport": "http"}).start()
    d.wait_state("hcrash", "healthy")
    a.proc.kill()
    a.proc.wait(5)
    # HTTP has no connection to lose: the verdict waits for the timeout (its reason says so)
    rec = d.wait_state("hcrash", "dead", timeout=10)
    # on this host the daemon can also see the pid is gone (DESIGN.md): dead, not just no_heartbeat
    assert rec["reason"].startswith("no heartbeat for") and "is gone" in rec["reason"]


class _BusyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    times = []

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        _BusyHandler.times.append(time.monotonic())
        busy = len(_BusyHandler.times) <= 2
        body = json.dumps({"success": not busy, "message": "busy" if busy else "ok",
                           "timestamp": ""}).encode()
        self.send_response(503 if busy else 200)
        if busy:
            self.send_header("Retry-After", "1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_503_retry_after_is_honoured(agentd_factory):
    _BusyHandler.times = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BusyHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        a = agentd_factory("patient", heartbeat={
            "transport": "http", "interval": "5s",
            "url": f"http://127.0.0.1:{server.server_address[1]}/heartbeat"}).start()
        wait_for(lambda: len(_BusyHandler.times) >= 3, timeout=10, what="third attempt")
        gaps = [b - a_ for a_, b in zip(_BusyHandler.times, _BusyHandler.times[1:])]
        assert all(0.9 <= g < 2.5 for g in gaps[:2]), gaps  # not reconnect_min (0.1 s), not 5 s
        assert "daemon busy (503)" in a.log()
    finally:
        server.shutdown()
        server.server_close()


def test_sighup_and_post_reload(daemon_factory, agentd_factory):
    d = daemon_factory().start()
    a = agentd_factory("reloader", d).start()
    d.wait_state("reloader", "healthy")
    a.config["heartbeat"]["interval"] = "0.1s"
    a.write_config()
    a.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in a.log(), what="reload")
    # the daemon's observed interval (smoothed) falls from 0.3 s towards 0.1 s
    wait_for(lambda: (d.agent("reloader")["interval"] or 1.0) < 0.2, timeout=15,
             what="heartbeats every 0.1 s")
    with open(a.config_path, "w") as f:
        f.write("heartbeat: {interval: soon}\n")
    doc = a.api("/reload", "POST")
    assert doc["success"] is False and "heartbeat.interval" in doc["message"]
    assert d.state("reloader") == "healthy" and a.proc.poll() is None


def test_heartbeat_sender_library_in_three_lines(daemon_factory):
    d = daemon_factory().start()
    program = (
        "import sys, time\n"
        "from agentd import HeartbeatSender\n"
        f"sender = HeartbeatSender('lib-app', socket_path={d.socket_path!r}, interval=0.2)\n"
        "sender.start()\n"
        "print('started', flush=True)\n"
        "sys.stdin.readline()\n"
        "sender.stop()\n")
    proc = subprocess.Popen([sys.executable, "-c", program], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    rec = d.wait_state("lib-app", "healthy")
    assert rec["pid"] == proc.pid
    proc.stdin.write("\n")
    proc.stdin.close()
    assert proc.wait(10) == 0
    d.wait_state("lib-app", "stopped")


def _library_program(d, body: str, before: str = "", kwargs: str = "") -> subprocess.Popen:
    """A Python program using HeartbeatSender (`sender`, interval 0.2 s) as `body` says;
    it prints what it has to say and reads a line from stdin where `body` waits."""
    head = ("import os, sys, time\n"
            "from agentd import HeartbeatSender\n" + before +
            f"sender = HeartbeatSender('lib-app', socket_path={d.socket_path!r}, interval=0.2"
            f"{kwargs})\n")
    return subprocess.Popen([sys.executable, "-c", head + body], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def test_a_program_that_ends_without_stop_says_stopping_at_exit(daemon_factory):
    d = daemon_factory().start()
    proc = _library_program(d, "sender.start()\nprint('started', flush=True)\n"
                               "sys.stdin.readline()\n")  # ... and just ends
    assert proc.stdout.readline().strip() == "started"
    d.wait_state("lib-app", "healthy")
    proc.communicate("\n", timeout=10)
    assert proc.returncode == 0
    rec = d.wait_state("lib-app", "stopped")
    assert "dead" not in [ev["to"] for ev in d.events("lib-app")] and rec["pid"] == proc.pid


def test_a_program_ended_by_an_uncaught_exception_is_dead_not_stopped(daemon_factory):
    d = daemon_factory().start()
    proc = _library_program(d, "sender.start()\nprint('started', flush=True)\n"
                               "sys.stdin.readline()\nraise RuntimeError('boom')\n")
    assert proc.stdout.readline().strip() == "started"
    d.wait_state("lib-app", "healthy")
    proc.communicate("\n", timeout=10)
    assert proc.returncode == 1
    rec = d.wait_state("lib-app", "dead")
    assert rec["reason"] == "ended by an uncaught RuntimeError: boom"


def test_sys_exit_in_a_callback_does_not_stop_the_beat(daemon_factory):
    d = daemon_factory().start()
    callback = "def bail(stats):\n    sys.exit(3)\n"
    proc = _library_program(d, "sender.start()\nprint('started', flush=True)\n"
                               "sys.stdin.readline()\nsender.stop()\n",
                            before=callback, kwargs=", on_success=bail")
    assert proc.stdout.readline().strip() == "started"
    beats = d.wait_state("lib-app", "healthy")["heartbeats"]
    wait_for(lambda: d.agent("lib-app")["heartbeats"] >= beats + 3, what="beats after sys.exit")
    proc.communicate("\n", timeout=10)
    d.wait_state("lib-app", "stopped")


def test_a_fork_while_an_http_heartbeat_waits_for_its_answer_does_not_hang_the_child(
        daemon_factory):
    d = daemon_factory().start()
    head = ("import os, sys, time\n"
            "from agentd import HeartbeatSender\n"
            f"sender = HeartbeatSender('lib-http', transport='http', "
            f"url='http://127.0.0.1:{d.port}/heartbeat', interval=0.5, timeout=30)\n"
            "sender.start()\nprint('started', flush=True)\nsys.stdin.readline()\n"
            "pid = os.fork()\n"
            "if pid == 0:\n    print('child', flush=True)\n    os._exit(0)\n"
            "os.waitpid(pid, 0)\nprint('reaped', flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", head], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "started"
        d.wait_state("lib-http", "healthy")
        d.proc.send_signal(signal.SIGSTOP)  # the next beat now waits for its answer
        time.sleep(1.2)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "child"  # hung in the fork handler before
        assert proc.stdout.readline().strip() == "reaped"
    finally:
        d.proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait(10)


def test_stop_from_a_callback_returns_and_start_after_stop_resumes(daemon_factory):
    d = daemon_factory().start()
    callback = (
        "done = []\n"
        "def stop_once(stats):\n"
        "    if not done:\n"
        "        done.append(1)\n"
        "        sender.stop()  # deadlocked: callbacks ran under the agent's lock\n"
        "        print('stopped', flush=True)\n")
    program = (
        "sender.start()\n"
        "sys.stdin.readline()\n"
        "sender.start()  # again: sent nothing before\n"
        "print('restarted', flush=True)\n"
        "sys.stdin.readline()\n"
        "sender.stop()\n")
    proc = _library_program(d, program, before=callback, kwargs=", on_success=stop_once")
    assert proc.stdout.readline().strip() == "stopped"
    d.wait_state("lib-app", "stopped")
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "restarted"
    d.wait_state("lib-app", "healthy")
    proc.communicate("\n", timeout=10)
    assert proc.returncode == 0
    d.wait_state("lib-app", "stopped")


def test_start_twice_runs_one_beat(daemon_factory):
    d = daemon_factory().start()
    proc = _library_program(d, "sender.start()\nsender.start()\ntime.sleep(0.1)\n"
                               "sender.start()\nprint('started', flush=True)\n"
                               "sys.stdin.readline()\n")
    assert proc.stdout.readline().strip() == "started"
    first = d.wait_state("lib-app", "healthy")["heartbeats"]
    began = time.monotonic()
    time.sleep(2.0)
    beats = d.agent("lib-app")["heartbeats"] - first
    slots = (time.monotonic() - began) / 0.2
    assert beats <= slots + 2  # one chain of timers; two would send about twice as many
    proc.communicate("\n", timeout=10)


def test_a_forked_child_never_speaks_for_its_parent(daemon_factory):
    d = daemon_factory().start()
    program = (
        "sender.start()\n"
        "time.sleep(0.3)\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    sender.stop()  # the child's copy: must not say the parent stops\n"
        "    sys.exit(0)    # and its atexit must not either\n"
        "os.waitpid(child, 0)\n"
        "print('forked', child, flush=True)\n"
        "sys.stdin.readline()\n"
        "sender.stop()\n")
    proc = _library_program(d, program)
    words = proc.stdout.readline().split()
    assert words[0] == "forked"
    beats = d.agent("lib-app")["heartbeats"]
    wait_for(lambda: d.agent("lib-app")["heartbeats"] >= beats + 3, what="the parent beating on")
    rec = d.agent("lib-app")
    assert (rec["state"], rec["pid"], rec["connected"]) == ("healthy", proc.pid, True)
    assert [ev["to"] for ev in d.events("lib-app")] == ["healthy"]
    assert all(a["pid"] != int(words[1]) for a in d.get("/agents")[2]["agents"])
    proc.communicate("\n", timeout=10)
    assert proc.returncode == 0
    d.wait_state("lib-app", "stopped")


def test_a_url_urllib_cannot_use_fails_check_config_and_never_kills_the_agent(daemon_factory,
                                                                               agentd_factory):
    d = daemon_factory().start()
    a = agentd_factory("urls", d).start()
    d.wait_state("urls", "healthy")
    for n, bad in enumerate(("http://127.0.0.1:99999/heartbeat", "http://[::1/heartbeat",
                             "http://:8690/x")):
        a.config["heartbeat"]["url"] = bad
        a.write_config()
        out = subprocess.run([sys.executable, "-m", "agentd", "-config", a.config_path,
                              "--check-config"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 2 and "heartbeat.url" in out.stderr, (bad, out.stderr)
        a.proc.send_signal(signal.SIGHUP)  # the same file on a reload: refused, still alive
        wait_for(lambda: a.log().count("reload refused") > n, what="the reload refused")
        assert a.proc.poll() is None
    beats = d.agent("urls")["heartbeats"]
    wait_for(lambda: d.agent("urls")["heartbeats"] > beats, what="the agent still beating")


def test_the_first_heartbeat_does_not_report_start_up_as_load(daemon_factory, agentd_factory):
    d = daemon_factory().start()
    agentd_factory("fresh", d, heartbeat={"interval": "5s"}).start()
    rec = d.wait_state("fresh", "healthy")
    assert rec["heartbeats"] == 1 and rec["cpu"] == 0.0  # not the interpreter's start-up


def test_a_daemon_restart_costs_about_its_own_restart_time_not_an_interval(daemon_factory,
                                                                             agentd_factory):
    d = daemon_factory().start()
    a = agentd_factory("prompt", d, heartbeat={"interval": "30s"}).start()
    d.wait_state("prompt", "healthy")
    d.wait_events("prompt", lambda e: e["to"] == "healthy")
    assert d.stop() == 0  # the agent's next beat is 30 s away
    wait_for(lambda: "closed the connection" in a.log(), timeout=5, what="the hang-up noticed")
    d.start()
    rec = d.wait_state("prompt", "healthy", timeout=10)  # not 30 s
    assert rec["heartbeats"] == 2
    wait_for(lambda: "reconnected" in a.log(), what="the reconnect logged")
    assert a.proc.poll() is None

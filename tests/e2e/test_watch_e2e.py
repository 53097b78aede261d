"""agentd watching processes it did not start (pidfile, command-line match) and running one
(`agentd run`): real processes, the real daemon, kill -9 and restarts."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from support.wait import wait_for

pytestmark = pytest.mark.timeout(120)


class Service:
    """A `sleep` standing in for a service: started behind a pidfile, or with an argv[0]
    a command-line match can find."""

    def __init__(self, pidfile: str = "", argv0: str = ""):
        self.pidfile = pidfile
        self.proc = subprocess.Popen([argv0 or "sleep", "600"], executable=shutil.which("sleep"))
        if pidfile:
            with open(pidfile + ".tmp", "w") as f:
                f.write(f"{self.proc.pid}\n")
            os.replace(pidfile + ".tmp", pidfile)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


@pytest.fixture
def services():
    started = []
    yield lambda **kw: started.append(Service(**kw)) or started[-1]
    for service in started:
        if service.proc.poll() is None:
            service.kill()


def test_a_watched_process_killed_is_dead_at_once_and_its_restart_is_picked_up(
        daemon_factory, agentd_factory, services, short_tmp):
    d = daemon_factory().start()
    pidfile = os.path.join(short_tmp, "web.pid")
    web = services(pidfile=pidfile)
    a = agentd_factory("watcher", d, heartbeat={"interval": "30s"},
                       watch=[{"agent_id": "web", "pidfile": pidfile}]).start()
    rec = d.wait_state("web", "healthy")
    assert rec["pid"] == web.pid and rec["memory"] > 0 and rec["connected"] is True
    assert rec["watcher"] == "watcher"  # which agentd speaks for it
    assert d.wait_state("watcher", "healthy")["pid"] == a.proc.pid  # agentd's own record too
    assert d.agent("watcher")["watcher"] is None
    shown = subprocess.run([sys.executable, "-m", "hbdaemon.ctl", "-c", d.config_path,
                            "status"], capture_output=True, text=True, timeout=30).stdout
    assert "WATCHED BY" in shown and any(line.split()[0] == "web" and "watcher" in line.split()
                                         for line in shown.splitlines()[1:])
    web.kill()
    # the beat is every 30 s: only the pidfd wake-up can tell the daemon this soon
    rec = d.wait_state("web", "dead", timeout=10)
    assert rec["reason"] == f"process {web.pid} exited"
    again = services(pidfile=pidfile)  # the service restarts and rewrites its pidfile
    wait_for(lambda: d.agent("web")["pid"] == again.pid and d.state("web") == "healthy",
             timeout=40, what="the restarted service picked up")
    assert d.state("watcher") == "healthy"


def test_a_missing_or_stale_pidfile_is_never_healthy_and_says_why(daemon_factory, agentd_factory,
                                                                  short_tmp):
    d = daemon_factory().start()
    missing = os.path.join(short_tmp, "missing.pid")
    stale = os.path.join(short_tmp, "stale.pid")
    reused = os.path.join(short_tmp, "reused.pid")
    gone = subprocess.Popen(["true"])
    gone.wait(5)
    with open(stale, "w") as f:
        f.write(f"{gone.pid}\n")
    with open(reused, "w") as f:  # names a live process started after the file was written
        f.write(f"{os.getpid()}\n")
    os.utime(reused, (time.time() - 86400 * 365, time.time() - 86400 * 365))
    agentd_factory("watcher", d, watch=[{"agent_id": "m", "pidfile": missing},
                                        {"agent_id": "s", "pidfile": stale},
                                        {"agent_id": "r", "pidfile": reused}]).start()
    assert d.wait_state("m", "dead")["reason"] == f"pidfile {missing} does not exist"
    assert d.wait_state("s", "dead")["reason"] == \
        f"pidfile {stale} is stale: process {gone.pid} is gone"
    assert d.wait_state("r", "dead")["reason"].startswith(f"pidfile {reused} is stale: pid ")
    time.sleep(1.0)  # several beats: none of them made any of the three healthy
    assert [e["to"] for e in d.events() if e["agent_id"] in "msr"] == ["dead"] * 3


def test_a_command_line_match_takes_the_oldest_and_finds_the_next_after_a_kill(
        daemon_factory, agentd_factory, services):
    d = daemon_factory().start()
    first = services(argv0="fake-redis-server")
    time.sleep(0.05)
    second = services(argv0="fake-redis-server")
    agentd_factory("watcher", d, watch=[{"agent_id": "redis",
                                         "match": "^fake-redis-server 600$"}]).start()
    assert d.wait_state("redis", "healthy")["pid"] == first.pid  # the oldest match
    first.kill()
    d.wait_state("redis", "dead", timeout=10)
    wait_for(lambda: d.agent("redis")["pid"] == second.pid and d.state("redis") == "healthy",
             timeout=10, what="the other match taken up")


def test_twenty_targets_on_one_connection_and_a_killed_watcher_makes_them_dead(
        daemon_factory, agentd_factory, services, short_tmp):
    d = daemon_factory().start()
    watch = []
    for n in range(20):
        pidfile = os.path.join(short_tmp, f"t{n}.pid")
        services(pidfile=pidfile)
        watch.append({"agent_id": f"t{n}", "pidfile": pidfile})
    a = agentd_factory("watcher", d, watch=watch).start()
    for n in range(20):
        d.wait_state(f"t{n}", "healthy")
    assert d.get("/stats")[2]["unix_connections"] == 1
    a.proc.kill()
    a.proc.wait(5)
    for n in range(20):  # the targets still run, but nobody vouches for them
        rec = d.wait_state(f"t{n}", "dead", timeout=10)
        assert rec["reason"].startswith(f"its watcher (process {a.proc.pid}, which spoke for pid")


def test_stopping_agentd_leaves_its_targets_stopped_not_dead(daemon_factory, agentd_factory,
                                                             services, short_tmp):
    d = daemon_factory().start()
    pidfile = os.path.join(short_tmp, "web.pid")
    services(pidfile=pidfile)
    a = agentd_factory("watcher", d, watch=[{"agent_id": "web", "pidfile": pidfile}]).start()
    d.wait_state("web", "healthy")
    assert a.stop() == 0
    d.wait_state("web", "stopped")
    d.wait_state("watcher", "stopped")


def _run(d, agent_id, *command, timeout=30):
    return subprocess.run([sys.executable, "-m", "agentd", "run", "--agent-id", agent_id,
                           "--set", f"heartbeat.socket_path={d.socket_path}",
                           "--set", "heartbeat.interval=0.2s", "--", *command],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("script,status,state,reason", [
    ("exit 0", 0, "dead", "exited with code 0"),
    ("exit 3", 3, "dead", "exited with code 3"),
    ("kill -9 $$", 137, "dead", "was killed by signal 9 (SIGKILL)"),
])
def test_agentd_run_reports_how_its_child_ended_and_exits_with_its_status(
        daemon_factory, script, status, state, reason):
    d = daemon_factory().start()
    done = _run(d, "job", "/bin/sh", "-c", f"sleep 0.5; {script}")
    assert done.returncode == status, done.stderr
    rec = d.wait_state("job", state)
    assert rec["reason"].endswith(reason) and rec["transport"] == "unix"
    events = [e["to"] for e in d.wait_events("job", lambda e: e["to"] == state)]
    assert events[0] == state  # nothing after the last word


def test_agentd_run_forwards_sigterm_and_a_stop_is_stopped(daemon_factory):
    d = daemon_factory().start()
    proc = subprocess.Popen([sys.executable, "-m", "agentd", "run", "--agent-id", "svc",
                             "--set", f"heartbeat.socket_path={d.socket_path}", "--",
                             "/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"])
    rec = d.wait_state("svc", "healthy")
    assert rec["pid"] != proc.pid  # the child's pid, not agentd's
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert d.wait_state("svc", "stopped")["reason"] == "agent said stopping"


def test_agentd_run_takes_an_exit_of_128_plus_the_stop_signal_for_a_stop(daemon_factory):
    d = daemon_factory().start()
    proc = subprocess.Popen([sys.executable, "-m", "agentd", "run", "--agent-id", "jvm",
                             "--set", f"heartbeat.socket_path={d.socket_path}", "--",
                             "/bin/sh", "-c", "trap 'exit 143' TERM; while :; do sleep 0.1; done"])
    d.wait_state("jvm", "healthy")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 143
    d.wait_state("jvm", "stopped")


def test_agentd_run_killed_takes_its_child_with_it(daemon_factory, short_tmp):
    d = daemon_factory().start()
    proc = subprocess.Popen([sys.executable, "-m", "agentd", "run", "--agent-id", "orphan",
                             "--set", f"heartbeat.socket_path={d.socket_path}", "--",
                             "sleep", "600"])
    child = d.wait_state("orphan", "healthy")["pid"]
    proc.kill()
    proc.wait(5)
    wait_for(lambda: not os.path.exists(f"/proc/{child}") or
             open(f"/proc/{child}/stat").read().split()[2] == "Z", timeout=10,
             what="the child ended with agentd run")


def test_agentd_run_refuses_a_missing_command_or_one_that_cannot_start(daemon_factory,
                                                                       short_tmp):
    d = daemon_factory().start()
    assert _run(d, "x").returncode == 2
    done = _run(d, "x", "/nonexistent/program")
    assert done.returncode == 127 and "cannot run /nonexistent/program" in done.stderr
    text = os.path.join(short_tmp, "notes.txt")
    with open(text, "w") as f:
        f.write("not a program\n")
    assert _run(d, "x", text).returncode == 126  # there, but not runnable
    bad = subprocess.run([sys.executable, "-m", "agentd", "run", "--agent-id", "bad id!", "--",
                          "true"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--agent-id" in bad.stderr


def test_a_live_process_failing_its_probe_leaves_healthy_and_comes_back(daemon_factory,
                                                                        agentd_factory):
    d = daemon_factory().start()
    server = subprocess.Popen([sys.executable, "-c", (
        "import http.server, os, sys\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(500 if os.path.exists(sys.argv[1]) else 200)\n"
        "        self.end_headers()\n"
        "    def log_message(self, *a): pass\n"
        "s = http.server.HTTPServer(('127.0.0.1', 0), H)\n"
        "print(s.server_address[1], flush=True)\n"
        "s.serve_forever()\n"), os.path.join(d.dir, "sick")], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        agentd_factory("watcher", d, heartbeat={"interval": "0.2s"}, watch=[{
            "agent_id": "api", "match": f"^{sys.executable} -c import http.server",
            "probe": {"http": f"http://127.0.0.1:{port}/health", "failures": 2}}]).start()
        assert d.wait_state("api", "healthy")["pid"] == server.pid
        open(os.path.join(d.dir, "sick"), "w").close()  # alive, but answering 500 now
        rec = d.wait_state("api", "no_heartbeat")
        assert rec["reason"] == (f"http http://127.0.0.1:{port}/health: answered 500, not 2xx "
                                 "(2 probes in a row failed)")
        assert rec["pid"] == server.pid and rec["connected"] is True
        os.unlink(os.path.join(d.dir, "sick"))
        d.wait_state("api", "healthy")
    finally:
        server.kill()
        server.wait(5)


def test_a_pidfile_rewritten_while_the_old_process_lives_is_taken_up_and_a_fifo_is_refused(
        daemon_factory, agentd_factory, services, short_tmp):
    d = daemon_factory().start()
    pidfile = os.path.join(short_tmp, "web.pid")
    fifo = os.path.join(short_tmp, "fifo.pid")
    os.mkfifo(fifo)  # a reader that opened it blocking would wait for ever
    old = services(pidfile=pidfile)
    agentd_factory("watcher", d, watch=[{"agent_id": "web", "pidfile": pidfile},
                                        {"agent_id": "pipe", "pidfile": fifo}]).start()
    assert d.wait_state("web", "healthy")["pid"] == old.pid
    assert d.wait_state("pipe", "dead")["reason"] == f"pidfile {fifo} is not a regular file"
    new = services(pidfile=pidfile)  # the old one still runs
    wait_for(lambda: d.agent("web")["pid"] == new.pid, what="the new pid taken up")
    beats = d.agent("watcher")["heartbeats"]
    wait_for(lambda: d.agent("watcher")["heartbeats"] > beats + 2, what="agentd beating on")
    old.kill()  # no longer the one watched: not news
    time.sleep(0.5)
    assert d.state("web") == "healthy" and d.agent("web")["pid"] == new.pid


def test_a_probe_that_hangs_never_holds_up_agentds_own_beat_or_a_kill(daemon_factory,
                                                                       agentd_factory, services,
                                                                       short_tmp):
    import socket
    d = daemon_factory(agent={"health_check": {"heartbeat_timeout": "1.5s"}}).start()
    silent = socket.socket()  # accepts, never answers: each probe waits its 2 s out
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/health"
    watch = []
    for n in range(3):
        pidfile = os.path.join(short_tmp, f"s{n}.pid")
        services(pidfile=pidfile)
        watch.append({"agent_id": f"s{n}", "pidfile": pidfile,
                      "probe": {"http": url, "timeout": "2s", "failures": 100}})
    victim = services(pidfile=os.path.join(short_tmp, "v.pid"))
    watch.append({"agent_id": "v", "pidfile": os.path.join(short_tmp, "v.pid")})
    agentd_factory("watcher", d, heartbeat={"interval": "0.3s"}, watch=watch).start()
    d.wait_state("v", "healthy", timeout=20)
    time.sleep(3)  # rounds of 6 s of probes under way
    victim.kill()
    d.wait_state("v", "dead", timeout=3)  # told at once, not after the probes
    assert [e["to"] for e in d.events("watcher")] == ["healthy"]  # never silent
    silent.close()


def test_agentd_run_with_an_unreadable_token_file_is_a_clear_error(daemon_factory):
    d = daemon_factory().start()
    done = subprocess.run([sys.executable, "-m", "agentd", "run", "--agent-id", "x",
                           "--set", "heartbeat.transport=http",
                           "--set", "heartbeat.auth_token_file=/nonexistent/token",
                           "--set", f"heartbeat.url=http://127.0.0.1:{d.port}/heartbeat",
                           "--", "true"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "heartbeat.auth_token_file" in done.stderr
    assert "Traceback" not in done.stderr

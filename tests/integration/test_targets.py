"""agentd's targets against real processes: pidfiles (missing, garbage, stale, reused),
command-line matches, and the exit watcher with and without pidfds."""

import os
import subprocess
import threading
import time

import pytest

from agentd.targets import ExitWatcher, Target, match_locator, pidfile_locator, unit_locator

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def sleeper():
    procs = []

    def start(argv0="sleep"):
        procs.append(subprocess.Popen([argv0, "60"], executable="/bin/sleep"))
        return procs[-1]
    yield start
    for proc in procs:
        proc.kill()
        proc.wait(5)


def write(path, text, age=0.0):
    with open(path, "w") as f:
        f.write(text)
    if age:
        os.utime(path, (time.time() - age, time.time() - age))


def test_a_pidfile_is_read_or_says_why_not(tmp_path, sleeper):
    path = str(tmp_path / "svc.pid")
    locate = pidfile_locator(path)
    assert locate() == (None, f"pidfile {path} does not exist")
    for garbage in ("", "abc", "-5", "0", "99999999999", "\x00\x01"):
        write(path, garbage)
        assert locate() == (None, f"pidfile {path} holds no pid"), garbage
    live = sleeper()
    write(path, f"{live.pid}\n")
    assert locate() == (live.pid, "")
    write(path, f"{live.pid}\n", age=3600)  # the process started after the file: a reused pid
    assert locate()[1].startswith(f"pidfile {path} is stale: pid {live.pid} now belongs")
    gone = subprocess.Popen(["true"])
    gone.wait(5)
    write(path, f"{gone.pid}\n")
    assert locate() == (None, f"pidfile {path} is stale: process {gone.pid} is gone")
    os.chmod(path, 0)
    if os.geteuid() != 0:
        assert "cannot be read" in locate()[1]


def test_a_match_takes_the_oldest_and_leaves_out_agentd_and_the_excluded(sleeper):
    first = sleeper("svc-alpha")
    time.sleep(0.05)
    second = sleeper("svc-alpha")
    assert match_locator(r"^svc-alpha 60$", set)() == (first.pid, "")
    assert match_locator(r"^svc-alpha", lambda: {first.pid})() == (second.pid, "")
    assert match_locator(r"^nothing-runs-like-this$", set)() == \
        (None, "no process matches '^nothing-runs-like-this$'")
    assert match_locator(r"test_targets", set)()[0] != os.getpid()  # never agentd itself


def test_a_unit_without_systemd_or_without_a_main_process_says_why():
    def fake(out, code=0, err=""):
        return lambda *a, **k: subprocess.CompletedProcess(a, code, out, err)
    assert unit_locator("web.service", fake("MainPID=4242\nActiveState=active\n"))() == (4242, "")
    assert unit_locator("web.service", fake("MainPID=0\nActiveState=inactive\n"))() == \
        (None, "unit web.service has no main process (inactive)")
    assert unit_locator("web.service", fake("", 1, "Failed to connect to bus"))() == \
        (None, "unit web.service: Failed to connect to bus")

    def missing(*a, **k):
        raise FileNotFoundError(2, "No such file or directory")
    assert unit_locator("web.service", missing)()[1].startswith("cannot ask systemd")


@pytest.mark.parametrize("pidfds", [True, False])
def test_the_exit_watcher_sees_a_kill_at_once_with_or_without_pidfds(sleeper, pidfds, caplog):
    ended = []
    seen = threading.Event()
    watcher = ExitWatcher(lambda target, pid: (ended.append((target.agent_id, pid)), seen.set()))
    watcher._pidfds = pidfds and hasattr(os, "pidfd_open")
    watcher.start()
    try:
        procs = [sleeper() for _ in range(3)]
        targets = [Target(f"t{n}", "test", lambda: (None, "")) for n in range(3)]
        for target, proc in zip(targets, procs):
            watcher.watch(target, proc.pid, None)
        watcher.unwatch(targets[2])  # no longer watched: its end is nobody's news
        procs[2].kill()
        began = time.monotonic()
        procs[1].kill()
        assert seen.wait(5)
        took = time.monotonic() - began
        procs[1].wait(5)
        time.sleep(0.2 if pidfds else 1.2)
        assert ended == [("t1", procs[1].pid)]
        assert took < 3.0  # at once on a pidfd, within a poll without (loose for CI)
        if not pidfds:
            assert "without pidfds" in caplog.text
    finally:
        watcher.stop()


def test_a_unit_systemctl_cannot_answer_for_is_found_in_its_cgroup_and_a_stop_is_told(
        tmp_path, sleeper):
    from agentd.targets import unit_stop_asked
    older = sleeper()
    time.sleep(0.05)
    newer = sleeper()
    (tmp_path / "web.service").mkdir()
    (tmp_path / "web.service" / "cgroup.procs").write_text(f"{newer.pid}\n{older.pid}\n")

    def no_bus(*a, **k):
        return subprocess.CompletedProcess(a, 1, "", "Failed to connect to bus")
    assert unit_locator("web.service", no_bus, ("/nonexistent", str(tmp_path)))() == \
        (older.pid, "")
    assert unit_locator("db.service", no_bus, (str(tmp_path),))() == \
        (None, "unit db.service: Failed to connect to bus")

    def state(active, pid=0, restarts=0, result="success"):
        return lambda *a, **k: subprocess.CompletedProcess(
            a, 0, f"MainPID={pid}\nActiveState={active}\nNRestarts={restarts}\n"
                  f"Result={result}\n", "")
    assert unit_stop_asked("web.service", state("deactivating"))() is True
    assert unit_stop_asked("web.service", state("inactive"))() is True
    assert unit_stop_asked("web.service", state("inactive", result="signal"))() is False
    for crashed in ("active", "failed", "activating"):
        assert unit_stop_asked("web.service", state(crashed))() is False
    assert unit_stop_asked("web.service", no_bus)() is False
    seen = {"MainPID": "100", "NRestarts": "0"}  # the last look, before the end
    # a restart already over when we ask: a new main process, no automatic restart
    assert unit_stop_asked("web.service", state("active", 200), seen)() is True
    # systemd restarted it after a failure (Restart=): a crash
    assert unit_stop_asked("web.service", state("active", 200, 1), seen)() is False
    assert unit_stop_asked("web.service", state("active", 200, 0, "exit-code"), seen)() is False


def test_probes_say_what_failed_and_pass_when_answered(tmp_path):
    import socket
    from agentd.probes import file_probe, http_probe, tcp_probe
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    assert tcp_probe(f"127.0.0.1:{port}", 1.0)() is None
    listener.close()
    assert tcp_probe(f"127.0.0.1:{port}", 1.0)().startswith(f"tcp 127.0.0.1:{port}: ")
    silent = socket.socket()  # accepts, never answers: the timeout holds
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    began = time.monotonic()
    error = http_probe(f"http://127.0.0.1:{silent.getsockname()[1]}/", 0.3)()
    assert error and time.monotonic() - began < 3
    silent.close()
    stamp = tmp_path / "stamp"
    assert file_probe(str(stamp), 60)().startswith(f"file {stamp}: ")
    stamp.write_text("x")
    assert file_probe(str(stamp), 60)() is None
    os.utime(stamp, (time.time() - 120, time.time() - 120))
    assert "last written 120s ago (more than 60s)" in file_probe(str(stamp), 60)()


def test_a_target_is_unresponsive_only_after_its_failures_in_a_row():
    results = iter(["down", None, "down", "down", "down", None])
    target = Target("t", "test", lambda: (None, ""), probe=lambda: next(results), failures=2)
    assert [target.unresponsive() for _ in range(6)] == [
        "", "", "", "down (2 probes in a row failed)", "down (3 probes in a row failed)", ""]


def test_a_target_gone_between_its_look_and_its_watch_never_deadlocks_the_beat(
        tmp_path, sleeper, monkeypatch):
    from agentd.agent import Agent
    from agentd.config import load_config
    live = sleeper()
    (tmp_path / "svc.pid").write_text(f"{live.pid}\n")
    (tmp_path / "agentd.yaml").write_text(
        f"heartbeat: {{socket_path: {tmp_path}/none.sock}}\n"
        f"watch: [{{agent_id: svc, pidfile: {tmp_path}/svc.pid}}]\n")
    agent = Agent(load_config(str(tmp_path / "agentd.yaml")), report_self=False)

    def gone(pid):
        raise ProcessLookupError(3, "No such process")
    monkeypatch.setattr(os, "pidfd_open", gone)  # it exits right after it was found
    done = threading.Event()
    threading.Thread(target=lambda: (agent._send_target(agent.targets[0]), done.set()),
                     daemon=True).start()
    assert done.wait(5), "the beat deadlocked on the agent's own lock"
    assert agent.targets[0].pid is None and agent.targets[0].detail == f"process {live.pid} exited"


def test_a_thread_id_in_a_pidfile_is_not_a_process(tmp_path):
    ready = threading.Event()
    tid = []
    t = threading.Thread(target=lambda: (tid.append(threading.get_native_id()), ready.wait(5)))
    t.start()
    try:
        while not tid:
            time.sleep(0.01)
        (tmp_path / "t.pid").write_text(f"{tid[0]}\n")
        target = Target("t", "test", pidfile_locator(str(tmp_path / "t.pid")))
        assert target.locate() is False
        assert target.detail == f"pid {tid[0]} is a thread of process {os.getpid()}, not a process"
    finally:
        ready.set()
        t.join(5)

"""The check behind `dead` against real processes: exit seen on a pidfd, pid reuse, a live one."""

import subprocess
import sys
import time

from hbdaemon import process


def test_a_process_exiting_during_the_wait_is_gone_and_a_live_one_is_not():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.05)"])
    started = process.create_time(child.pid)
    assert process.wait_gone(child.pid, started) is True  # exits within the ~0.2 s wait
    child.wait(5)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        began = time.monotonic()
        assert process.wait_gone(live.pid, process.create_time(live.pid)) is False
        assert time.monotonic() - began < 5
        assert process.wait_gone(live.pid, started=1.0) is True  # a different process now
    finally:
        live.kill()
        live.wait(5)
    assert process.wait_gone(child.pid) is True  # reaped: no such process


def test_a_peer_process_is_held_by_a_pidfd_and_its_end_seen_without_proc():
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    peer = process.PeerProcess(live.pid)
    try:
        assert peer.exited() is False and peer.exited(0.05) is False
        live.kill()
        assert peer.exited(5) is True  # woken by the exit, not after the timeout
        live.wait(5)
        assert peer.exited() is True  # reaped: the pidfd still says so, pid reuse or not
    finally:
        peer.close()
        live.kill()
        live.wait(5)


def test_a_peer_process_without_pidfds_falls_back_to_proc(monkeypatch):
    monkeypatch.setattr(process, "_open_pidfd", lambda pid: None)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    peer = process.PeerProcess(live.pid)
    try:
        assert peer.exited() is False
        live.kill()
        live.wait(5)
        assert peer.exited(0.2) is True
    finally:
        peer.close()


def test_pidfds_numbered_past_1024_are_waited_on():
    import os
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        import pytest
        pytest.skip(f"the hard open file limit ({hard}) leaves no room for fd 1024")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    filler = [os.open("/dev/null", os.O_RDONLY) for _ in range(1030)]
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        peer = process.PeerProcess(live.pid)
        assert peer._fd >= 1024  # select() refuses such a number; poll() does not
        assert peer.exited(0.01) is False
        live.kill()
        assert peer.exited(5) is True
        peer.close()
    finally:
        live.kill()
        live.wait(5)
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _name_of(argv):
    """program_name of a real process started with `argv` (waits until it has exec'd)."""
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                if process.psutil.Process(child.pid).cmdline()[-1:] == argv[-1:]:
                    break
            except process.psutil.Error:
                pass
            time.sleep(0.01)
        return process.program_name(child.pid)
    finally:
        child.kill()
        child.wait(5)


def test_a_program_is_named_by_its_executable_or_the_script_its_interpreter_runs(tmp_path):
    assert _name_of(["sleep", "30"]) == "sleep"
    assert _name_of([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "0"]) == \
        "http.server"
    script = tmp_path / "worker.py"
    script.write_text("import time\ntime.sleep(30)\n")
    assert _name_of([sys.executable, "-u", str(script), "x"]) == "worker.py"
    assert _name_of([sys.executable, "-c", "import time; time.sleep(30)"]).startswith("python")
    assert process.program_name(2**22 + 12345) is None  # no such process


def test_a_rewritten_argv0_is_read_up_to_its_first_word_and_colon():
    assert process._argv0(["nginx: master process /usr/sbin/nginx -g daemon off;"]) == "nginx"
    assert process._argv0(["postgres: 15/main: checkpointer"]) == "postgres"
    assert process._argv0(["/usr/local/bin/heartbeat-agent"]) == "heartbeat-agent"
    assert process._argv0([]) == process._argv0([""]) == ""

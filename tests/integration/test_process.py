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

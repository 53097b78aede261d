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

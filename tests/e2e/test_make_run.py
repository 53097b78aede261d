"""`make run`: Ctrl-C at any moment stops the daemon and the agent, and make itself."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from support.tools import in_ci
from support.wait import wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _in_session(sid: int) -> list:
    """Pids of the processes still in session `sid`."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                found.append(int(name))
    return found


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("after", [0.0, 0.05, 0.3, 4.0])  # starting; waiting for the daemon; both up
def test_ctrl_c_stops_everything(after):
    if not (_port_free(8690) and _port_free(8691)):
        reason = "ports 8690/8691 are in use here (make run listens on them)"
        if in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    venv = os.path.relpath(os.path.dirname(os.path.dirname(sys.executable)), REPO)
    proc = subprocess.Popen(["make", "-s", "run", f"VENV={venv}"], cwd=REPO, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(after)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends: the whole foreground group
        out, _ = proc.communicate(timeout=20)
        wait_for(lambda: not _in_session(proc.pid), timeout=10,
                 what=f"every process of make run to end: {out[-2000:]}")
        assert _port_free(8690) and _port_free(8691)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)

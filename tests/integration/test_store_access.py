"""A state store the daemon's user may not read or write is an error to fix, not a corrupt
file: nothing is moved aside, nothing forgotten. Run as a real other user when root."""

import os
import shutil
import subprocess
import sys
import tempfile

from support.tools import require_tool

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPEN = ("import sys; from hbdaemon.store import Store, StoreError\n"
        "try:\n    Store(sys.argv[1], 10, 1.0).open()\n"
        "except StoreError as exc:\n    print(exc); sys.exit(3)\n")


def test_a_store_owned_by_another_user_is_refused_and_left_alone():
    base = tempfile.mkdtemp(prefix="hbs", dir="/tmp")
    try:
        os.chmod(base, 0o755)
        state = os.path.join(base, "state")
        os.mkdir(state)
        db = os.path.join(state, "hbdaemon.db")
        with open(db, "wb"):
            pass
        if os.geteuid() == 0:  # as root, a file root owns 0600 and the daemon's user is another
            os.chmod(db, 0o600)
            os.chmod(state, 0o777)
            argv = [require_tool("setpriv", "util-linux"), "--reuid=65534", "--regid=65534",
                    "--clear-groups", "/usr/bin/python3"]
        else:  # as anyone else, a file this user may not read
            os.chmod(db, 0o000)
            argv = [sys.executable]
        out = subprocess.run(argv + ["-c", OPEN, state], cwd=REPO, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 3, out.stdout + out.stderr
        assert "is not readable and writable by this user" in out.stdout
        assert sorted(os.listdir(state)) == ["hbdaemon.db"]  # not moved aside
    finally:
        shutil.rmtree(base, ignore_errors=True)

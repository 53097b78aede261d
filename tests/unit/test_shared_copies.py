"""agentd ships without hbdaemon, so it carries copies of a few modules: they must not drift."""

import filecmp
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = ("configkit.py", "convert.py", "keyfile.py", "logsetup.py", "wakeup.py")


@pytest.mark.parametrize("name", SHARED)
def test_agentd_copy_is_identical(name):
    ours, theirs = (os.path.join(REPO, pkg, name) for pkg in ("hbdaemon", "agentd"))
    assert filecmp.cmp(ours, theirs, shallow=False), \
        f"agentd/{name} differs from hbdaemon/{name}: edit hbdaemon's and run `make sync-copies`"


def test_neither_package_imports_the_other():
    for pkg, other in (("hbdaemon", "agentd"), ("agentd", "hbdaemon")):
        for name in os.listdir(os.path.join(REPO, pkg)):
            if name.endswith(".py"):
                with open(os.path.join(REPO, pkg, name)) as f:
                    text = f.read()
                assert f"import {other}" not in text and f"from {other}" not in text, f"{pkg}/{name}"

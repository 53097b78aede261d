"""Shared fixtures. Helpers live in tests/support/ (on sys.path through this directory)."""

import shutil
import tempfile

import pytest

from support.agentd import AgentdProcess
from support.daemon import DaemonProcess


@pytest.fixture
def short_tmp():
    """A temp dir with a short path: AF_UNIX socket paths are limited to 107 bytes."""
    path = tempfile.mkdtemp(prefix="hb", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon_factory(short_tmp):
    """Start real hbdaemon processes; every one still running is killed at teardown."""
    started = []

    def make(name="d", **config):
        d = DaemonProcess(short_tmp, name, config)
        started.append(d)
        return d

    yield make
    for d in started:
        d.kill()


@pytest.fixture
def agentd_factory(short_tmp):
    """Start real agentd processes; every one still running is killed at teardown."""
    started = []

    def make(name="agent-1", daemon=None, **config):
        if daemon is not None:
            config.setdefault("heartbeat", {})
            config["heartbeat"].setdefault("socket_path", daemon.socket_path)
            config["heartbeat"].setdefault("url", f"http://127.0.0.1:{daemon.port}/heartbeat")
        a = AgentdProcess(short_tmp, name, config)
        started.append(a)
        return a

    yield make
    for a in started:
        a.kill()

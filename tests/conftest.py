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


def _factory(make):
    """Yield `make`, then kill every process it started."""
    started = []

    def tracked(*args, **kwargs):
        started.append(make(*args, **kwargs))
        return started[-1]

    yield tracked
    for proc in started:
        proc.kill()


@pytest.fixture
def daemon_factory(short_tmp):
    """Start real hbdaemon processes; every one still running is killed at teardown."""
    yield from _factory(lambda name="d", **config: DaemonProcess(short_tmp, name, config))


@pytest.fixture
def agentd_factory(short_tmp):
    """Start real agentd processes (pointed at `daemon` if given); killed at teardown."""
    def make(name="agent-1", daemon=None, **config):
        if daemon is not None:
            hb = config.setdefault("heartbeat", {})
            hb.setdefault("socket_path", daemon.socket_path)
            hb.setdefault("url", f"http://127.0.0.1:{daemon.port}/heartbeat")
        return AgentdProcess(short_tmp, name, config)
    yield from _factory(make)

"""Shared fixtures. Helpers live in tests/support/ (on sys.path through this directory)."""

import shutil
import tempfile

import pytest

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

"""Requiring external tools: skip with the reason for a newcomer, fail in CI."""

import os
import shutil

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_tool(name: str, package: str = "") -> str:
    """Path of `name`; skips (or fails when CI=true) if it is not installed."""
    path = shutil.which(name)
    if path:
        return path
    reason = f"{name} is not installed (apt install {package or name}); .ci/run installs it"
    if in_ci():
        pytest.fail(reason)
    pytest.skip(reason)

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


def require_root_for_packaging() -> None:
    """Module-level gate: packaging tests skip for a non-root newcomer, never in CI."""
    if os.geteuid() == 0:
        return
    if in_ci():
        raise RuntimeError("CI=true but not root: the packaging tests need root")
    pytest.skip("packaging tests need root (debootstrap, chroot, namespaces, rpmbuild's "
                "file owners); CI runs them as root", allow_module_level=True)


def require_root(why: str) -> None:
    """Skip (or fail when CI=true) unless this test runs as root."""
    if os.geteuid() == 0:
        return
    reason = f"needs root {why}; CI runs it as root"
    if in_ci():
        pytest.fail(reason)
    pytest.skip(reason)

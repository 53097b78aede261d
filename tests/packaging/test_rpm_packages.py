"""The RPMs: built with a plain rpmbuild for a chosen target Python, linted, listed."""

import os
import re
import shutil
import subprocess

import pytest

from support.tools import require_root_for_packaging

require_root_for_packaging()

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEBIAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
pytestmark = pytest.mark.timeout(600)


def must(cmd, **kwargs):
    proc = subprocess.run(cmd, env=dict(os.environ, PATH=DEBIAN_PATH, **kwargs.pop("env", {})),
                          capture_output=True, text=True, timeout=600, **kwargs)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def rpms():
    missing = [t for t in ("rpmbuild", "rpmlint", "rpm", "git") if not shutil.which(t, path=DEBIAN_PATH)]
    assert not missing, f"missing tools: {missing} (.ci/run installs rpm and rpmlint)"
    dist = os.path.join(REPO, "dist")
    for old in os.listdir(dist) if os.path.isdir(dist) else ():
        if old.endswith(".rpm"):
            os.unlink(os.path.join(dist, old))
    must(["bash", os.path.join(REPO, "packaging/build-rpm.sh")], cwd=REPO)
    return {name.split("-")[0]: os.path.join(dist, name) for name in os.listdir(dist)
            if name.endswith(".noarch.rpm")}


def test_rpmlint_is_clean(rpms):
    assert set(rpms) == {"hbdaemon", "agentd"}
    out = must(["rpmlint", "-c", os.path.join(REPO, "packaging/rpm/rpmlint.toml"), *rpms.values()])
    assert "0 errors, 0 warnings" in out, out


@pytest.mark.parametrize("pkg,extra", [("hbdaemon", "python3-psutil"), ("agentd", "python3-psutil")])
def test_files_config_and_target_python(rpms, pkg, extra):
    files = must(["rpm", "-qlp", rpms[pkg]]).split()
    for path in (f"/usr/bin/{pkg}", f"/usr/lib/python3.9/site-packages/{pkg}/cli.py",
                 f"/etc/{pkg}/{pkg}.yaml", f"/etc/sysconfig/{pkg}",
                 f"/usr/lib/systemd/system/{pkg}.service", f"/usr/share/man/man8/{pkg}.8.gz",
                 f"/etc/logrotate.d/{pkg}"):
        assert path in files, f"{path} missing from {pkg}"
    if pkg == "hbdaemon":
        assert "/usr/bin/hbctl" in files and "/usr/share/man/man1/hbctl.1.gz" in files
    config = must(["rpm", "-qcp", rpms[pkg]]).split()
    assert f"/etc/{pkg}/{pkg}.yaml" in config and f"/etc/logrotate.d/{pkg}" in config
    requires = must(["rpm", "-qp", "--requires", rpms[pkg]])
    assert "python(abi) = 3.9" in requires and "python3-pyyaml" in requires
    assert (extra in requires) if extra else "psutil" not in requires
    scripts = must(["rpm", "-qp", "--scripts", rpms[pkg]])
    assert "useradd -r" in scripts and "systemctl --no-reload preset" in scripts
    with open(os.path.join(REPO, "packaging/rpm/hbdaemon.spec")) as f:
        assert re.search(r"%config\(noreplace\) /etc/" + pkg, f.read())

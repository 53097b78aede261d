"""The Debian packages, built, linted and used the way an operator uses them.

Needs root (debootstrap, chroot, namespaces): skipped for a non-root newcomer, never
skipped in CI (CI=true), where .ci/run installs the tools. A missing tool fails.
"""

import os
import re
import shutil
import subprocess
import tarfile

import pytest

from support.tools import require_root_for_packaging

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))
DEBIAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # not pyenv's python3
CACHE = "/var/cache/hbdaemon-tests/bookworm-minbase.tar"
TOOLS = ("dpkg-buildpackage", "dh", "lintian", "debootstrap", "unshare", "chroot",
         "systemd-analyze", "systemd-nspawn", "ip", "git")
TEST_UNIT = """[Unit]
Description=hbdaemon package test
After=multi-user.target hbdaemon.service agentd.service

[Service]
Type=oneshot
ExecStart=/bin/sh /usr/local/lib/hb-pkgtest/systemd_check.sh
StandardOutput=file:/var/log/hb-pkgtest.out
StandardError=file:/var/log/hb-pkgtest.err
ExecStopPost=/bin/systemctl poweroff --no-block
"""

pytestmark = pytest.mark.timeout(900)

require_root_for_packaging()


def run(cmd, **kwargs):
    env = dict(os.environ, PATH=DEBIAN_PATH, DEBIAN_FRONTEND="noninteractive")
    kwargs.setdefault("timeout", 600)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, **kwargs)


def must(cmd, **kwargs):
    proc = run(cmd, **kwargs)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def debs():
    missing = [t for t in TOOLS if shutil.which(t, path=DEBIAN_PATH) is None]
    assert not missing, f"missing tools: {missing} (.ci/run installs them; see README 'Build the packages')"
    for old in os.listdir(os.path.join(REPO, "dist")) if os.path.isdir(os.path.join(REPO, "dist")) else ():
        if old.endswith(".deb"):
            os.unlink(os.path.join(REPO, "dist", old))
    must(["bash", os.path.join(REPO, "packaging/build-deb.sh")], cwd=REPO)
    found = {name.split("_")[0]: os.path.join(REPO, "dist", name)
             for name in os.listdir(os.path.join(REPO, "dist")) if name.endswith("_all.deb")}
    assert set(found) == {"hbdaemon", "agentd"}
    return found


def test_lintian_is_clean(debs):
    out = must(["lintian", "--pedantic", "--fail-on", "error,warning", *debs.values()])
    assert not re.search(r"^[EW]: ", out, re.M), out


@pytest.mark.parametrize("pkg,expected", [
    ("hbdaemon", ["./usr/bin/hbdaemon", "./usr/bin/hbctl", "./usr/share/man/man1/hbctl.1.gz", "./usr/lib/python3/dist-packages/hbdaemon/daemon.py",
                  "./etc/hbdaemon/hbdaemon.yaml", "./etc/default/hbdaemon", "./etc/init.d/hbdaemon",
                  "./lib/systemd/system/hbdaemon.service", "./usr/share/man/man8/hbdaemon.8.gz",
                  "./etc/logrotate.d/hbdaemon", "./etc/polkit-1/rules.d/50-hbdaemon.rules"]),
    ("agentd", ["./usr/bin/agentd", "./usr/lib/python3/dist-packages/agentd/agent.py",
                "./etc/agentd/agentd.yaml", "./etc/default/agentd", "./etc/init.d/agentd",
                "./lib/systemd/system/agentd.service", "./usr/share/man/man8/agentd.8.gz",
                "./etc/logrotate.d/agentd"]),
])
def test_every_expected_file_is_in_the_package(debs, pkg, expected):
    listing = [line.split()[-1] for line in must(["dpkg-deb", "-c", debs[pkg]]).splitlines()]
    for path in expected:
        assert path in listing, f"{path} missing from {pkg}"
    conffiles = must(["dpkg-deb", "-I", debs[pkg], "conffiles"]).split()
    assert f"/etc/{pkg}/{pkg}.yaml" in conffiles and f"/etc/init.d/{pkg}" in conffiles
    assert f"/etc/logrotate.d/{pkg}" in conffiles
    depends = must(["dpkg-deb", "-f", debs[pkg], "Depends"])
    assert "python3-yaml" in depends and "adduser" in depends
    assert "python3-psutil" in depends  # agentd: the processes it watches


@pytest.mark.parametrize("unit", ["hbdaemon", "agentd"])
def test_units_are_hardened(unit):
    out = must(["systemd-analyze", "security", "--offline=true",
                os.path.join(REPO, "packaging/systemd", f"{unit}.service")])
    level = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", out).group(1))
    assert level <= 2.0, out[-2000:]


@pytest.fixture(scope="module")
def root(debs, tmp_path_factory):
    """A minimal bookworm with both packages installed (apt resolves their dependencies)."""
    path = str(tmp_path_factory.mktemp("debian-root"))
    if os.path.exists(CACHE):
        with tarfile.open(CACHE) as tar:
            tar.extractall(path)
    else:
        mirror = _mirror()
        must(["debootstrap", "--variant=minbase", "bookworm", path, mirror], timeout=900)
        os.makedirs(os.path.dirname(CACHE), exist_ok=True)
        with tarfile.open(CACHE + ".part", "w") as tar:
            tar.add(path, arcname=".")
        os.replace(CACHE + ".part", CACHE)
    os.chmod(path, 0o755)  # it becomes /: services running as their users must traverse it
    shutil.copy("/etc/resolv.conf", os.path.join(path, "etc/resolv.conf"))
    with open(os.path.join(path, "usr/sbin/policy-rc.d"), "w") as f:
        f.write("#!/bin/sh\nexit 101\n")  # nothing starts during installation
    os.chmod(os.path.join(path, "usr/sbin/policy-rc.d"), 0o755)
    for pkg, deb in debs.items():
        shutil.copy(deb, os.path.join(path, "tmp", os.path.basename(deb)))
    must(["chroot", path, "apt-get", "update", "-qq"], timeout=600)
    # systemd as well, for the unit checks and the boot test; the packages pull in the rest
    must(["chroot", path, "apt-get", "install", "-y", "-qq", "--no-install-recommends",
          "systemd", "systemd-sysv", "dbus", "polkitd", "logrotate",
          *(f"/tmp/{os.path.basename(d)}" for d in debs.values())], timeout=600)
    os.unlink(os.path.join(path, "usr/sbin/policy-rc.d"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _mirror() -> str:
    with open("/etc/apt/sources.list.d/debian.sources") as f:
        m = re.search(r"^URIs:\s*(\S+)", f.read(), re.M)
    return m.group(1) if m else "http://deb.debian.org/debian"


def test_installation_creates_users_and_state(root):
    passwd = open(os.path.join(root, "etc/passwd")).read()
    group = open(os.path.join(root, "etc/group")).read()
    assert re.search(r"^hbdaemon:", passwd, re.M) and re.search(r"^agentd:", passwd, re.M)
    members = re.search(r"^hbdaemon:[^:]*:\d+:(.*)$", group, re.M).group(1).split(",")
    assert "agentd" in members  # so agentd may use the 0660 socket
    st = os.stat(os.path.join(root, "var/lib/hbdaemon"))
    assert oct(st.st_mode & 0o777) == "0o750"
    assert must(["chroot", root, "hbdaemon", "--version"]).startswith("hbdaemon 0.1.0")
    assert must(["chroot", root, "agentd", "--check-config"]).strip().endswith("every 30s)")


def test_units_verify_cleanly_against_the_installed_root(root):
    proc = run(["systemd-analyze", "verify", "--man=no", f"--root={root}",
                "/lib/systemd/system/hbdaemon.service", "/lib/systemd/system/agentd.service"])
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), proc.stdout + proc.stderr


def test_init_scripts_drive_both_services(root):
    shutil.copy(os.path.join(HERE, "sysv_check.sh"), os.path.join(root, "tmp/sysv_check.sh"))
    proc = run(["unshare", "--fork", "--pid", "--mount", "--net", f"--mount-proc={root}/proc",
                "sh", "-c", f"ip link set lo up && exec chroot {root} /bin/sh /tmp/sysv_check.sh"],
               timeout=300)
    output = proc.stdout + proc.stderr
    checks = re.findall(r"^check (\S+) (ok|fail.*)$", proc.stdout, re.M)
    assert checks and "done" in proc.stdout, output
    failed = [(name, result) for name, result in checks if result != "ok"]
    assert not failed, f"{failed}\n{output}"


def test_systemd_boots_both_hardened_units(root):
    """systemd-nspawn -b boots the root; a oneshot unit drives both services and powers off."""
    lib = os.path.join(root, "usr/local/lib/hb-pkgtest")
    os.makedirs(lib, exist_ok=True)
    shutil.copy(os.path.join(HERE, "systemd_check.sh"), os.path.join(lib, "systemd_check.sh"))
    unit = os.path.join(root, "etc/systemd/system/hb-pkgtest.service")
    wants = os.path.join(root, "etc/systemd/system/multi-user.target.wants/hb-pkgtest.service")
    with open(unit, "w") as f:
        f.write(TEST_UNIT)
    os.symlink("/etc/systemd/system/hb-pkgtest.service", wants)
    try:
        boot = run(["systemd-nspawn", "-D", root, "-b", "--quiet", "--register=no", "--keep-unit",
                    "--private-network"], timeout=300)
    finally:
        os.unlink(wants)
        os.unlink(unit)
    out = _read(os.path.join(root, "var/log/hb-pkgtest.out"))
    detail = f"{out}\n{_read(os.path.join(root, 'var/log/hb-pkgtest.err'))}\n{boot.stdout[-3000:]}"
    checks = re.findall(r"^check (\S+) (ok|fail.*)$", out, re.M)
    assert checks and "done" in out, detail
    failed = [(name, result) for name, result in checks if result != "ok"]
    assert not failed, f"{failed}\n{detail}"
    print("\n".join(re.findall(r"^(?:exposure|timing) .*$", out, re.M)))  # booted figures


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def test_purge_removes_config_and_state_and_nothing_else(root):
    must(["chroot", root, "apt-get", "purge", "-y", "-qq", "hbdaemon", "agentd"])
    for gone in ("etc/hbdaemon", "etc/agentd", "var/lib/hbdaemon", "var/log/hbdaemon",
                 "etc/init.d/hbdaemon", "etc/default/agentd", "usr/bin/hbdaemon"):
        assert not os.path.exists(os.path.join(root, gone)), gone
    passwd = open(os.path.join(root, "etc/passwd")).read()
    assert re.search(r"^hbdaemon:", passwd, re.M)  # system users stay (Debian policy)
    assert os.path.exists(os.path.join(root, "usr/lib/python3/dist-packages/yaml"))

#!/bin/bash
# Build hbdaemon_*.deb and agentd_*.deb into dist/ (make deb). Needs: debhelper,
# dh-python, pybuild-plugin-pyproject, python3-all, python3-setuptools, git.
set -euo pipefail
# pyenv's python3 comes first on the developers' PATH; Debian builds need Debian's own.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
top=$(cd "$(dirname "$0")/.." && pwd)
version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$top/hbdaemon/__init__.py")
work=$(mktemp -d)
[ -n "${KEEP:-}" ] || trap 'rm -rf "$work"' EXIT
src="$work/hbdaemon-$version"

bash "$top/packaging/copy-source.sh" "$src"
rm -rf "$src/debian"
cp -rL "$top/packaging/debian" "$src/debian"
for pkg in hbdaemon agentd; do
    cp -L "$top/packaging/systemd/$pkg.service" "$src/debian/$pkg.service"
    cp -L "$top/packaging/init.d/$pkg" "$src/debian/$pkg.init"
    cp -L "$top/packaging/default/$pkg" "$src/debian/$pkg.default"
    cp -L "$top/packaging/logrotate/$pkg" "$src/debian/$pkg.logrotate"
done

(cd "$src" && dpkg-buildpackage -us -uc -b --no-sign)
mkdir -p "$top/dist"
cp "$work"/*.deb "$top/dist/"
ls -1 "$top"/dist/*.deb

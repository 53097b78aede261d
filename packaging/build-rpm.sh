#!/bin/bash
# Build hbdaemon-*.noarch.rpm and agentd-*.noarch.rpm into dist/ (make rpm).
# PYTHON3_VERSION picks the target Python (default 3.9, EL9). Needs rpm and git.
set -euo pipefail
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
top=$(cd "$(dirname "$0")/.." && pwd)
version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$top/hbdaemon/__init__.py")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/{SOURCES,BUILD,RPMS,SRPMS,SPECS}
bash "$top/packaging/copy-source.sh" "$work/src/hbdaemon-$version"
tar -C "$work/src" -czf "$work/SOURCES/hbdaemon-$version.tar.gz" "hbdaemon-$version"
rpmbuild -bb --define "_topdir $work" --define "python3_version ${PYTHON3_VERSION:-3.9}" \
    "$top/packaging/rpm/hbdaemon.spec"
mkdir -p "$top/dist"
cp "$work"/RPMS/noarch/*.rpm "$top/dist/"
ls -1 "$top"/dist/*.rpm

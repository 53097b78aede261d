#!/bin/bash
# copy-source.sh DEST: the source tree as git sees it (tracked and new files, nothing
# ignored) copied to DEST with links dereferenced: a symlinked unit or init script
# would otherwise drop out of the package silently.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1"
cd "$top"
git ls-files -z --cached --others --exclude-standard |
    xargs -0 -I{} sh -c 'test -e "$1" && cp --parents -L "$1" "$2"' _ {} "$1"

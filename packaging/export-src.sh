#!/bin/bash
# Copy the source tree as a clean checkout would have it (tracked files plus new files that are
# not ignored), so that build leftovers in the work tree (.venv, egg-info, caches, build/, dist/)
# never reach a package. Outside git, copy everything but those leftovers.
#
# usage: export-src.sh DEST
set -euo pipefail
dest=$1
rm -rf "$dest"
mkdir -p "$dest"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # -c lists tracked files even when deleted in the work tree: keep only those that exist.
    git ls-files -z -co --exclude-standard |
        while IFS= read -r -d '' f; do [ -e "$f" ] || [ -L "$f" ] && printf '%s\0' "$f"; done |
        tar --null -T - -cf - | tar -xf - -C "$dest"
else
    tar --exclude=./build --exclude=./dist --exclude=./.venv --exclude=./.git \
        --exclude='*.egg-info' --exclude=__pycache__ -cf - . | tar -xf - -C "$dest"
fi

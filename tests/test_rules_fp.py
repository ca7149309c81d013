"""The bundled rules must not flag the ordinary files of this Linux system.

A false positive on a system binary would block it: an outage. Scans every regular file under
the system binary and library directories (plus the interpreters' script libraries, where the
script rules could misfire, and this checkout's code) with both backends.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from scanner.engine import BACKENDS, ScanError, compile_rules

REPO = Path(__file__).resolve().parent.parent
MAX_SIZE = 64 << 20
SYSTEM_DIRS = ["/usr/bin", "/usr/sbin", "/usr/lib/x86_64-linux-gnu"]
SCRIPT_DIRS = ["/usr/lib/python3", "/usr/lib/python3.11", "/usr/share/perl", "/usr/share/perl5"]


def regular_files(root: str):
    """Regular files below root (or root itself), without following symlinks."""
    if os.path.isfile(root) and not os.path.islink(root):
        yield root
        return
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except OSError:
            continue
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    if e.name not in (".git", ".venv", "__pycache__", ".hypothesis"):
                        stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    yield e.path
            except OSError:
                continue


def scan_tree(rs, roots):
    scanned = skipped = 0
    hits: list[str] = []
    errors: list[str] = []
    for root in roots:
        for path in regular_files(root):
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SIZE:
                skipped += 1
                continue
            try:
                res = rs.match_path(path, timeout=30)
            except ScanError as e:
                errors.append(f"{path}: {e}")
                continue
            scanned += 1
            if res.matches:
                hits.append(f"{path}: {', '.join(res.rule_names)}")
    return scanned, skipped, hits, errors


@pytest.mark.parametrize("backend", BACKENDS)
def test_bundled_rules_do_not_flag_system_files(backend):
    rs = compile_rules([REPO / "rules"], backend=backend)
    t = time.monotonic()
    scanned, skipped, hits, errors = scan_tree(rs, SYSTEM_DIRS)
    elapsed = time.monotonic() - t
    print(f"{backend}: system dirs: scanned={scanned} skipped={skipped} errors={len(errors)} in {elapsed:.1f}s")
    assert hits == [], "false positives:\n" + "\n".join(hits)
    assert scanned > 1000
    # root reads everything here; an error would hide a file from the check
    assert errors == [], "\n".join(errors[:20])


def test_bundled_rules_do_not_flag_script_libraries_or_this_checkout():
    rs = compile_rules([REPO / "rules"], backend="yara")
    # This checkout's code and rules (not test fixtures, which may be malicious on purpose): the
    # repo may sit on a watched filesystem, and sources that name threats must not match them.
    roots = [d for d in SCRIPT_DIRS if os.path.isdir(d)] + [str(REPO / "scanner"), str(REPO / "rules")]
    roots += [str(p) for p in sorted((REPO / "tests").rglob("*.py"))]
    scanned, _, hits, errors = scan_tree(rs, roots)
    print(f"script dirs + checkout: scanned={scanned} errors={len(errors)}")
    assert hits == [], "false positives:\n" + "\n".join(hits)
    assert scanned > 1000
    assert errors == [], "\n".join(errors[:20])

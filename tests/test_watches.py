"""Watches: subtree classification, and ignore marks with both the new and the legacy flags."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scanner import fanotify as fan
from scanner.watches import Watches, Where

MODERN = fan.Features(True, True, True, True)
LEGACY = fan.Features(True, False, False, True)  # a pre-5.19 kernel: FAN_MARK_IGNORED_MASK only


def test_classify(tmp_path: Path) -> None:
    (tmp_path / "w" / "skip").mkdir(parents=True)
    w = Watches(-1, 0, (tmp_path / "w",), [tmp_path / "w" / "skip"], MODERN)
    base = os.fsencode(tmp_path)
    assert w.classify(base + b"/w/a") is Where.WATCHED
    assert w.classify(base + b"/w") is Where.WATCHED
    assert w.classify(base + b"/wx/a") is Where.OUTSIDE  # a prefix of the name is not a parent
    assert w.classify(base + b"/w/skip/a") is Where.EXCLUDED
    assert w.classify(b"/elsewhere/\xff") is Where.OUTSIDE


def _events_after_open(group: int, path: Path) -> int:
    proc = subprocess.Popen([sys.executable, "-c", f"open({str(path)!r}).close()"])
    seen = 0
    end = time.monotonic() + 10
    while proc.poll() is None and time.monotonic() < end:
        select.select([group], [], [], 0.05)
        for ev in fan.read_events(group):
            seen += 1
            fan.respond(group, ev.fd, True)
            os.close(ev.fd)
    assert proc.wait(timeout=10) == 0
    return seen


@pytest.mark.parametrize("features", [MODERN, LEGACY], ids=["mark_ignore", "ignored_mask"])
def test_ignore_and_unignore(tmpfs: Path, features: fan.Features) -> None:
    f = tmpfs / "f"
    f.write_bytes(b"x")
    group = fan.init(fan.FAN_CLASS_CONTENT | fan.FAN_CLOEXEC | fan.FAN_NONBLOCK)
    w = Watches(group, fan.FAN_OPEN_PERM, (tmpfs,), [], features)
    fd = os.open(f, os.O_RDONLY)  # opened before the mark: our own open needs no answer
    try:
        w.mark_all()
        assert w.rename_group is None and not w.needs_path(f.stat().st_dev)
        assert _events_after_open(group, f) == 1
        w.ignore(fd, survive_writes=True)
        w.ignore(fd, survive_writes=False)  # a mark with other flags is replaced, not an error
        assert _events_after_open(group, f) == 0
        dirfd = os.open(tmpfs, os.O_PATH | os.O_DIRECTORY)
        try:
            w.unignore(dirfd, b"f")
            w.unignore(dirfd, b"f")  # removing a mark that is not there is not an error
        finally:
            os.close(dirfd)
        assert _events_after_open(group, f) == 1
    finally:
        os.close(fd)
        w.close()
        os.close(group)


def test_path_needed_only_where_a_subtree_or_exclude_lies(tmpfs: Path, tmp_path: Path) -> None:
    """On a filesystem watched whole, a readlink per event is needed only if an exclude lies on it."""
    group = fan.init(fan.FAN_CLASS_CONTENT | fan.FAN_CLOEXEC | fan.FAN_NONBLOCK)
    dev = tmpfs.stat().st_dev
    try:
        # An exclude elsewhere (the daemon's state dir on the root fs, say) changes nothing here.
        w = Watches(group, fan.FAN_OPEN_PERM, (tmpfs,), [tmp_path / "state" / "not-yet"], MODERN)
        w.mark_all()
        assert not w.needs_path(dev)
        w.close()
        (tmpfs / "skip").mkdir()
        w = Watches(group, fan.FAN_OPEN_PERM, (tmpfs,), [tmpfs / "skip" / "later"], MODERN)
        w.mark_all()
        assert w.needs_path(dev) and w.classify(os.fsencode(tmpfs / "skip" / "later" / "x")) is Where.EXCLUDED
        w.close()
    finally:
        os.close(group)

"""Issue 4 end to end: the daemon quarantines a detection; the CLI restores it; the restored file opens."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from oatest import EICAR, try_open

pytestmark = pytest.mark.usefixtures("root")


def test_detection_quarantined_then_restored_and_allowed(tmpfs: Path, daemon_factory) -> None:
    d = daemon_factory([tmpfs], {"actions": {"write": "quarantine", "open": "quarantine", "exec": "quarantine"}})
    victim = tmpfs / "dropper.sh"
    victim.write_bytes(EICAR)
    os.chown(victim, 1234, 1234)
    os.chmod(victim, 0o750)
    os.utime(victim, ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    # close_write (or the open below) catches it; the action runs after the answer.
    try_open(victim)
    d.wait_for(lambda s: s["quarantined"] >= 1)
    assert not victim.exists()
    listing = json.loads(d.cli("quarantine", "list", "--json").stdout)
    assert len(listing) == 1
    entry = listing[0]
    assert entry["original_path"] == str(victim) and any("EICAR" in r for r in entry["rules"])
    assert {"id", "sha256", "quarantined_at"} <= entry.keys()
    r = d.cli("quarantine", "restore", entry["id"], "--json")
    assert r.returncode == 0, r.stderr
    assert victim.read_bytes() == EICAR
    st = victim.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1234, 1234, 0o750)
    assert st.st_mtime_ns == 1_600_000_000_123_456_789
    assert try_open(victim) == 0  # allow-listed by the restore
    allow = json.loads(d.cli("allow", "list", "--json").stdout)
    assert any(a["sha256"] == entry["sha256"] for a in allow)
    assert json.loads(d.cli("quarantine", "list", "--json").stdout) == []
    # The allow-list is per content: another copy of the same bytes is allowed too; other threats are not.
    (tmpfs / "copy").write_bytes(EICAR)
    assert try_open(tmpfs / "copy") == 0
    (tmpfs / "other").write_bytes(EICAR + b"\n")
    assert try_open(tmpfs / "other") in (errno.EPERM, errno.ENOENT)  # denied, or already quarantined
    d.wait_for(lambda s: s["quarantined"] >= 2)
    assert [q["original_path"] for q in json.loads(d.cli("quarantine", "list", "--json").stdout)] == [
        str(tmpfs / "other")]


def test_failing_hook_never_blocks_a_reply(tmpfs: Path, tmp_path: Path, daemon_factory) -> None:
    out = tmp_path / "hook.json"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\ncat > {out}\nexit 3\n")
    hook.chmod(0o755)
    d = daemon_factory([tmpfs], {"on_detect": str(hook), "on_detect_timeout": 5})
    (tmpfs / "e").write_bytes(EICAR)
    assert try_open(tmpfs / "e") == errno.EPERM
    d.wait_for(lambda s: out.exists() and out.stat().st_size > 0 or False)
    event = json.loads(out.read_text())
    assert event["path"] == str(tmpfs / "e") and event["verdict"] == "dangerous"
    assert d.status()["pending"] == 0

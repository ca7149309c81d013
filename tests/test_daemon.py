"""The daemon end to end on this host (fanotify-only), as root, on tmpfs mounts the tests create."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oatest import EICAR, REPO, Daemon, start_daemon, try_exec, try_open, umount, mount_tmpfs

pytestmark = pytest.mark.usefixtures("root")

# A rule whose condition is quadratic in the file size: seconds on ~200 KB, a real slow scan.
SLOW_RULE = """
rule slow_quadratic {
  condition:
    filesize > 1000 and for any i in (0..filesize - 1) : (
      for any j in (0..filesize - 1) : (uint8(i) == 0xFF and uint8(j) == 0xFE))
}
"""


def slow_rules(tmp_path: Path) -> Path:
    rules = tmp_path / "slow"
    rules.mkdir()
    (rules / "slow.yar").write_text(SLOW_RULE)
    return rules


def write_eicar(path: Path) -> None:
    path.write_bytes(EICAR)
    path.chmod(0o755)


def test_eicar_denied_clean_binary_runs_and_verdicts_recorded(tmpfs: Path, daemon_factory) -> None:
    d: Daemon = daemon_factory([tmpfs])
    bad = tmpfs / "eicar.com"
    write_eicar(bad)
    good = tmpfs / "true"
    shutil.copy("/bin/true", good)
    assert try_exec(bad) == errno.EPERM
    assert try_open(bad) == errno.EPERM
    assert subprocess.run([str(good)], timeout=10).returncode == 0
    db = sqlite3.connect(d.state_dir / "verdicts.db")
    end = time.monotonic() + 5  # SAFE verdicts reach SQLite in batches, within 50 ms
    while len(rows := dict(db.execute("SELECT ino, verdict FROM verdicts").fetchall())) < 2 \
            and time.monotonic() < end:
        time.sleep(0.02)
    assert rows[bad.stat().st_ino] == "dangerous"
    assert rows[good.stat().st_ino] == "safe"
    out = json.loads(d.cli("verdict", "--json", str(bad)).stdout)
    assert out["db"]["verdict"] == "dangerous" and out["db"]["valid"]
    assert any("EICAR" in r for r in out["db"]["rules"])
    assert json.loads(d.cli("verdict", "--json", str(good)).stdout)["db"]["verdict"] == "safe"
    s = d.status()
    assert s["denials"] >= 2 and s["mode"] == "fanotify-only"
    events = [e for e in d.log_events() if e["event"] == "access_denied"]
    assert events and events[0]["path"] == str(bad)
    # The history has the blocks, newest first.
    hist = json.loads(d.cli("events", "--json", "--verdict", "dangerous").stdout)
    assert hist and hist[0]["path"] == str(bad)


def test_close_write_scan_answers_first_exec_from_cache(tmpfs: Path, daemon_factory) -> None:
    d = daemon_factory([tmpfs])
    target = tmpfs / "fresh"
    subprocess.run(["cp", "/bin/true", str(target)], check=True, timeout=10)
    s = d.wait_for(lambda s: s["background_scans"] >= 1)
    assert subprocess.run([str(target)], timeout=10).returncode == 0
    after = d.status()
    assert after["scans"] == s["scans"], "the exec caused a second scan"
    # Answered without a scan: either the kernel skipped it (ignore mark) or the cache did.
    assert after["perm_events"] == s["perm_events"] or after["cache_hits"] > s["cache_hits"]


def test_written_executables_scanned_inline_and_threats_still_caught(tmpfs: Path, daemon_factory) -> None:
    """A small written executable is scanned by the event reader: its exec needs no scan (and no
    worker); one that matches is left to the workers and denied as ever."""
    d = daemon_factory([tmpfs])
    good = tmpfs / "tool"
    shutil.copy("/bin/true", good)  # x bits copied: an executable by the close_write policy
    s = d.wait_for(lambda s: s["background_scans"] >= 1)  # handed to the loop within HOLD_MS
    assert s["scans"] == s["inline_scans"] == 1 and s["in_flight_scans"] == 0
    assert subprocess.run([str(good)], timeout=10, check=False).returncode == 0
    assert d.status()["scans"] == 1, "the exec caused a scan"
    # A match is never decided inline: a worker scans the file again, the verdict is DANGEROUS.
    bad = tmpfs / "dropper"
    fd = os.open(bad, os.O_WRONLY | os.O_CREAT, 0o755)
    os.write(fd, EICAR)
    os.close(fd)
    d.wait_for(lambda s: s["background_scans"] >= 2)
    # No x bit and no executable magic when written: left to its first use, caught there.
    late = tmpfs / "late"
    late.write_bytes(EICAR)
    d.wait_for(lambda s: s["close_write_left"] >= 1)
    late.chmod(0o755)
    assert try_exec(bad) == errno.EPERM and try_exec(late) == errno.EPERM
    s = d.status()
    assert s["inline_scans"] == 1 and s["inline_disabled"] == 0
    assert s["denials"] >= 2 and s["scans"] == 3


def test_slow_rules_turn_inline_scanning_off(tmpfs: Path, tmp_path: Path, daemon_factory) -> None:
    rules = slow_rules(tmp_path)
    d = daemon_factory([tmpfs], {"bundled_rules": False, "rule_dirs": [str(rules)], "deadline": 30.0})
    for i in range(3):
        f = tmpfs / f"x{i}"
        f.write_bytes(b"\x7fELF" + b"\0" * 4000 + bytes([i]))  # ELF magic: an executable, 0644
    # The first one took the reader over INLINE_SLOW_S: the rest went to the workers.
    s = d.wait_for(lambda s: s["background_scans"] >= 3, timeout=120)
    assert s["inline_disabled"] == 1 and s["inline_scans"] == 1
    events = [e for e in d.log_events() if e["event"] == "inline_scan_disabled"]
    assert len(events) == 1 and events[0]["seconds"] > 0.01


def test_modified_safe_file_is_rescanned(tmpfs: Path, daemon_factory) -> None:
    d = daemon_factory([tmpfs], {"close_write_scan": False})
    target = tmpfs / "prog"
    shutil.copy("/bin/true", target)
    assert subprocess.run([str(target)], timeout=10).returncode == 0
    first = d.status()["scans"]
    assert subprocess.run([str(target)], timeout=10).returncode == 0
    assert d.status()["scans"] == first, "unchanged file was scanned again"
    with open(target, "ab") as f:  # changes size, mtime, ctime, and clears the ignore mark
        f.write(b"\0" * 16)
    assert subprocess.run([str(target)], timeout=10).returncode == 0
    assert d.status()["scans"] > first
    # And content that turns dangerous is caught on the next access, even after a SAFE verdict.
    os.truncate(target, 0)
    with open(target, "wb") as f:
        f.write(EICAR)
    assert try_open(target) == errno.EPERM


def test_slow_scan_answered_by_deadline_per_policy(tmpfs: Path, tmp_path: Path, daemon_factory) -> None:
    rules = slow_rules(tmp_path)
    d = daemon_factory([tmpfs], {"bundled_rules": False, "rule_dirs": [str(rules)], "deadline": 0.5,
                                 "close_write_scan": False, "on_error": "deny"})
    big = tmpfs / "big"
    big.write_bytes(b"\0" * 300_000)
    t0 = time.monotonic()
    assert try_open(big) == errno.EPERM  # on_error = deny
    assert time.monotonic() - t0 < 5
    s = d.status()
    assert s["timeouts"] >= 1


def test_thousand_concurrent_opens_all_complete(tmpfs: Path, tmp_path: Path, daemon_factory) -> None:
    rules = slow_rules(tmp_path)
    d = daemon_factory([tmpfs], {"bundled_rules": False, "rule_dirs": [str(rules)], "deadline": 1.0,
                                 "close_write_scan": False})
    files = tmpfs / "many"
    files.mkdir()
    for i in range(1000):
        (files / f"f{i}").write_bytes(b"\xff" * 2000 + i.to_bytes(4, "little"))
    script = (
        "import os, sys, concurrent.futures as cf\n"
        "d = sys.argv[1]\n"
        "def o(n):\n"
        "    fd = os.open(os.path.join(d, n), os.O_RDONLY); os.close(fd); return 1\n"
        "with cf.ThreadPoolExecutor(200) as ex: print(sum(ex.map(o, os.listdir(d))))\n"
    )
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", script, str(files)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "1000"
    elapsed = time.monotonic() - t0
    s = d.status()
    assert s["perm_events"] >= 1000 and s["pending"] == 0
    assert s["timeouts"] > 0, "the slow rule should have pushed some opens to the deadline"
    assert elapsed < 60


def test_sigkill_releases_every_opener_and_restart_reuses_db(tmpfs: Path, tmp_path: Path) -> None:
    rules = slow_rules(tmp_path)
    (rules / "eicar.yar").write_text((REPO / "rules" / "eicar.yar").read_text())
    state = tmp_path / "state"
    settings = {"bundled_rules": False, "rule_dirs": [str(rules)], "deadline": 30.0, "close_write_scan": False}
    d = start_daemon([tmpfs], state, settings)
    try:
        bad = tmpfs / "bad"
        write_eicar(bad)
        assert try_open(bad) == errno.EPERM
        for i in range(40):
            (tmpfs / f"slow{i}").write_bytes(b"\xff" * 50_000 + bytes([i]))
        openers = [subprocess.Popen([sys.executable, "-c", f"open({str(tmpfs / f'slow{i}')!r}).close()"])
                   for i in range(40)]
        d.wait_for(lambda s: s["pending"] >= 10, timeout=20)
        os.kill(d.pid, signal.SIGKILL)
        d.proc.wait(timeout=10)
        for p in openers:
            assert p.wait(timeout=15) == 0  # the kernel allowed them when the group died
    finally:
        d.stop(signal.SIGKILL)
    d2 = start_daemon([tmpfs], state, settings)
    try:
        before = d2.status()
        assert try_open(bad) == errno.EPERM
        after = d2.status()
        assert after["scans"] == before["scans"] and after["cache_hits"] == before["cache_hits"] + 1
    finally:
        d2.stop()


def test_own_accesses_and_state_dir_never_block(tmpfs: Path, tmp_path: Path) -> None:
    # The state dir inside the watched mount: the daemon's DB and log writes must not deadlock.
    d = start_daemon([tmpfs], tmpfs / "state", {})
    try:
        for i in range(20):
            (tmpfs / f"f{i}").write_bytes(b"data %d" % i)
            assert try_open(tmpfs / f"f{i}") == 0
        assert try_open(tmpfs / "state" / "verdicts.db") == 0
        s = d.status()
        assert s["scans"] >= 20
        rows = sqlite3.connect(tmpfs / "state" / "verdicts.db").execute("SELECT path FROM verdicts").fetchall()
        assert not any(b"/state/" in bytes(r[0]) for r in rows), "the daemon scanned its own state"
    finally:
        d.stop()


def test_rename_into_watched_subtree_clears_ignore_mark(tmpfs: Path, daemon_factory) -> None:
    watched = tmpfs / "watched"
    outside = tmpfs / "outside"
    watched.mkdir()
    outside.mkdir()
    d = daemon_factory([watched])
    smuggled = outside / "x"
    write_eicar(smuggled)
    assert try_open(smuggled) == 0  # outside the watch: allowed and ignore-marked
    s = d.status()
    assert s["outside_watch"] >= 1
    os.rename(smuggled, watched / "x")
    d.wait_for(lambda s: s["ignore_marks_cleared_by_rename"] >= 1)
    assert try_open(watched / "x") == errno.EPERM
    # A directory moved in: its files lose their marks too.
    (outside / "dir").mkdir()
    write_eicar(outside / "dir" / "y")
    assert try_open(outside / "dir" / "y") == 0
    os.rename(outside / "dir", watched / "dir")
    d.wait_for(lambda s: s["ignore_marks_cleared_by_rename"] >= 2)
    assert try_open(watched / "dir" / "y") == errno.EPERM


def test_rules_generation_bump_rescans_safe(tmpfs: Path, tmp_path: Path, daemon_factory) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "a.yar").write_text('rule marker_a { strings: $a = "AAAA-MARKER" condition: $a }')
    d = daemon_factory([tmpfs], {"bundled_rules": False, "rule_dirs": [str(rules)], "close_write_scan": False})
    f = tmpfs / "doc"
    f.write_bytes(b"BBBB-MARKER")
    assert try_open(f) == 0
    gen = d.status()["rules_generation"]
    scans = d.status()["scans"]
    (rules / "b.yar").write_text('rule marker_b { strings: $b = "BBBB-MARKER" condition: $b }')
    out = json.loads(d.cli("rules", "reload", "--json").stdout)
    assert out["ok"] and out["generation"] == gen + 1
    assert try_open(f) == errno.EPERM
    assert d.status()["scans"] == scans + 1
    # A broken rule file: clear error, the old rules keep working.
    (rules / "c.yar").write_text("rule broken { condition: nonsense_identifier }\n")
    r = d.cli("rules", "reload", "--json", check=False)
    assert r.returncode == 2
    assert "c.yar:1" in json.loads(r.stdout)["error"]
    g = tmpfs / "doc2"
    g.write_bytes(b"BBBB-MARKER again")
    assert try_open(g) == errno.EPERM
    assert d.status()["rules_generation"] == gen + 1


def test_sighup_reloads(tmpfs: Path, tmp_path: Path, daemon_factory) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "a.yar").write_text('rule marker_a { strings: $a = "AAAA-MARKER" condition: $a }')
    d = daemon_factory([tmpfs], {"bundled_rules": False, "rule_dirs": [str(rules)]})
    gen = d.status()["rules_generation"]
    (rules / "b.yar").write_text('rule marker_b { strings: $b = "BBBB-MARKER" condition: $b }')
    os.kill(d.pid, signal.SIGHUP)
    d.wait_for(lambda s: s["rules_generation"] == gen + 1)


def test_bad_inputs(tmpfs: Path, daemon_factory) -> None:
    d = daemon_factory([tmpfs])
    fifo = tmpfs / "fifo"
    os.mkfifo(fifo)
    # Opening a FIFO blocks until a writer comes: the daemon must not be what blocks it.
    r = subprocess.run(["timeout", "5", "sh", "-c", f"exec 3<>{fifo}; echo ok"], capture_output=True, text=True)
    assert r.stdout.strip() == "ok"
    empty = tmpfs / "empty"
    empty.touch()
    assert try_open(empty) == 0
    weird = os.fsencode(str(tmpfs)) + b"/bad-\xff\xfe-name"
    with open(weird, "wb") as f:
        f.write(EICAR)
    assert try_open(weird) == errno.EPERM
    denied = [e for e in d.log_events() if e["event"] == "access_denied"]
    assert any(e["path"].endswith("bad-\udcff\udcfe-name") for e in denied)
    # Deleted while being opened: the name is gone, the verdict still holds for the open fd.
    gone = tmpfs / "gone"
    gone.write_bytes(EICAR)
    fd = os.open(gone, os.O_PATH)
    os.unlink(gone)
    os.close(fd)
    s = d.status()
    assert s["pending"] == 0 and s["scan_errors"] == 0


def test_unreadable_db_is_a_clear_start_error(tmpfs: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "verdicts.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(AssertionError) as info:
        start_daemon([tmpfs], state, {}, timeout=30)
    assert "verdict DB" in str(info.value) and "move it aside" in str(info.value)
    (state / "verdicts.db").unlink()
    (state / "verdicts.db").mkdir()  # a directory where the DB should be
    with pytest.raises(AssertionError) as info:
        start_daemon([tmpfs], state, {}, timeout=30)
    assert "verdict DB" in str(info.value)


def test_excluded_path_and_uid(tmpfs: Path, daemon_factory) -> None:
    (tmpfs / "skip").mkdir()
    d = daemon_factory([tmpfs, tmpfs / "not-there"],
                       {"exclude_paths": [str(tmpfs / "skip")], "exclude_uids": [4242],
                        "exclude_exes": ["/usr/bin/md5sum"], "audit": True})
    assert any(e["event"] == "watch_path_missing" for e in d.log_events())
    write_eicar(tmpfs / "skip" / "e")
    assert try_open(tmpfs / "skip" / "e") == 0
    write_eicar(tmpfs / "e2")
    os.chmod(tmpfs / "e2", 0o644)
    r = subprocess.run(["setpriv", "--reuid=4242", "--regid=4242", "--clear-groups", "cat", str(tmpfs / "e2")],
                       capture_output=True, timeout=10)
    assert r.returncode == 0 and r.stdout == EICAR
    assert try_open(tmpfs / "e2") == errno.EPERM
    r = subprocess.run(["md5sum", str(tmpfs / "e2")], capture_output=True, timeout=10)
    assert r.returncode == 0  # an excluded executable reads it
    r = subprocess.run(["sha1sum", str(tmpfs / "e2")], capture_output=True, timeout=10)
    assert r.returncode != 0 and b"Operation not permitted" in r.stderr
    s = d.status()
    assert s["denials"] >= 2 and s["watch"] == [str(tmpfs)]
    assert s["audit"] is True  # FAN_ENABLE_AUDIT took: denials answered with FAN_AUDIT


def test_full_disk_for_the_db_costs_history_not_answers(tmpfs: Path, tmp_path: Path) -> None:
    state_mnt = mount_tmpfs("1m")
    try:
        d = start_daemon([tmpfs], state_mnt / "state", {"log_file": str(tmp_path / "oa.log")})
        try:
            filler = state_mnt / "filler"
            with open(filler, "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                except OSError:
                    pass
            for i in range(30):
                write_eicar(tmpfs / f"e{i}")
                assert try_open(tmpfs / f"e{i}") == errno.EPERM
            assert try_open(tmpfs / "e0") == errno.EPERM  # from the LRU
            assert any(e["event"] == "db_write_failed" for e in d.log_events())
            assert d.status()["pending"] == 0
        finally:
            d.stop()
    finally:
        umount(state_mnt)


def test_without_bpf_lsm_the_daemon_warns_and_protects(tmpfs: Path, tmp_path: Path, daemon_factory) -> None:
    """This host refuses BPF LSM programs: `auto` falls back with one warning, `require` refuses."""
    from scanner import bpf

    need_fallback = not bpf.probe()["bpf_lsm"]
    if not need_fallback:
        pytest.skip("this kernel has BPF LSM: the fallback is exercised where it is missing")
    pins = str(Path("/sys/fs/bpf") / "onaccess-hosttest")
    d = daemon_factory([tmpfs], {"bpf": "auto", "bpf_pin_dir": pins})
    s = d.status()
    assert s["mode"] == "fanotify-only" and s["mode_reason"]
    warnings = [e for e in d.log_events() if e["event"] == "bpf_unavailable"]
    assert len(warnings) == 1 and warnings[0]["reason"] == s["mode_reason"]
    write_eicar(tmpfs / "e")
    assert try_open(tmpfs / "e") == errno.EPERM
    with pytest.raises(AssertionError) as info:
        start_daemon([tmpfs], tmp_path / "req", {"bpf": "require", "bpf_pin_dir": pins})
    assert "BPF LSM fast path required" in str(info.value)


def test_file_deleted_during_scan_still_gets_a_verdict(tmpfs: Path, tmp_path: Path, daemon_factory) -> None:
    rules = slow_rules(tmp_path)
    d = daemon_factory([tmpfs], {"bundled_rules": False, "rule_dirs": [str(rules)], "deadline": 30.0,
                                 "close_write_scan": False, "log_level": "debug"})
    victim = tmpfs / "victim"
    victim.write_bytes(b"\0" * 6_000)
    opener = subprocess.Popen([sys.executable, "-c", f"open({str(victim)!r}).close()"])
    try:
        d.wait_for(lambda s: s["in_flight_scans"] >= 1)
        victim.unlink()
        assert opener.wait(timeout=60) == 0
    finally:
        if opener.poll() is None:
            opener.kill()
    s = d.wait_for(lambda s: s["scans"] >= 1, timeout=60)
    assert s["scan_errors"] == 0 and s["pending"] == 0
    verdicts = [e for e in d.log_events() if e["event"] == "scan_verdict"]
    assert verdicts[-1]["path"] == str(victim) and verdicts[-1]["verdict"] == "safe"


def test_empty_files_follow_the_rules_too(tmpfs: Path, tmp_path: Path, daemon_factory) -> None:
    """0-byte opens skip the worker pool only because the rule set was checked against b''."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "empty.yar").write_text("rule no_empty_files { condition: filesize == 0 }")
    (tmpfs / "full").write_bytes(b"x")
    d = daemon_factory([tmpfs], {"bundled_rules": False, "rule_dirs": [str(rules)]})
    os.mknod(tmpfs / "empty", 0o644 | stat.S_IFREG)  # created without an open
    assert try_open(tmpfs / "empty") == errno.EPERM
    with pytest.raises(PermissionError):  # every O_CREAT opens an empty file first
        (tmpfs / "new").write_bytes(b"data")
    assert try_open(tmpfs / "full") == 0
    assert d.status()["denials"] >= 1


def test_background_backlog_is_bounded(tmpfs: Path, tmp_path: Path, daemon_factory) -> None:
    """An untar-sized burst: the backlog stays bounded, deleted files are skipped, nothing is lost."""
    rules = slow_rules(tmp_path)
    (rules / "eicar.yar").write_text((REPO / "rules" / "eicar.yar").read_text())
    d = daemon_factory([tmpfs], {"bundled_rules": False, "rule_dirs": [str(rules)], "background_queue": 5,
                                 "close_write_scan": "all"})
    for i in range(40):
        (tmpfs / f"f{i}").write_bytes(b"\0" * 3000 + bytes([i]))
    s = d.wait_for(lambda s: s["background_dropped"] > 0)
    assert s["queued_scans"] <= 5 + 1
    for i in range(1, 40):  # f0 is being scanned; the queued ones lose their names
        (tmpfs / f"f{i}").unlink()
    d.wait_for(lambda s: s["queued_scans"] == 0 and s["in_flight_scans"] == 0, timeout=120)
    s = d.status()
    assert s["background_skipped"] > 0
    # A dropped file is still caught at its first open.
    write_eicar(tmpfs / "late")
    assert try_open(tmpfs / "late") == errno.EPERM

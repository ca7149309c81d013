"""Quarantine store: crash-safe moves, neutralised storage, byte-for-byte restore.

Runs as root (mounts tmpfs, chowns). Every mount is made by the test and unmounted in finally.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from scanner.quarantine import CRASH_ENV, MAGIC, Quarantine, QuarantineError
from scanner.store import Store

from oatest import EICAR, tmpfs_mount

REPO = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("root")


@pytest.fixture
def src(tmpfs: Path) -> Path:
    """The 'watched' filesystem the detected files live on (a tmpfs of the test's own)."""
    return tmpfs


def make_q(state: Path) -> Quarantine:
    return Quarantine(state / "verdicts.db", state / "quarantine")


def write_file(path: Path | bytes, data: bytes, uid: int = 1234, gid: int = 1234, mode: int = 0o640,
               mtime_ns: int = 1_600_000_000_123_456_789, atime_ns: int = 1_500_000_000_987_654_321) -> os.stat_result:
    with open(path, "wb") as f:
        f.write(data)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    os.utime(path, ns=(atime_ns, mtime_ns))
    return os.stat(path)


def copies_of(data: bytes, q: Quarantine, *places: Path) -> int:
    """How many copies of `data` exist: plain files in `places` + decoded quarantine entries."""
    count = 0
    for place in places:
        for entry in os.scandir(place):
            if entry.is_file(follow_symlinks=False) and Path(entry.path).read_bytes() == data:
                count += 1
    for rec in q.list():
        try:
            if q.read_content(rec.id) == data:
                count += 1
        except QuarantineError:
            pass
    return count


@pytest.mark.parametrize("layout", ["cross-fs", "same-fs"])
def test_quarantine_and_restore_round_trip(layout: str, src: Path, state: Path) -> None:
    if layout == "same-fs":
        state = src / "state"
    q = make_q(state)
    victim = src / "eicar.com"
    before = write_file(victim, EICAR, mode=0o4751)
    os.setxattr(victim, "user.origin", b"downloaded\x00from somewhere")

    rec = q.quarantine_path(bytes(victim), ["EICAR_Test_File"], event="exec")

    assert not victim.exists()
    if layout == "cross-fs":
        assert os.stat(q.root).st_dev != before.st_dev
    else:
        assert os.stat(q.root).st_dev == before.st_dev
    assert rec.state == "done" and rec.event == "exec" and rec.rules == ("EICAR_Test_File",)
    assert rec.sha256 == hashlib.sha256(EICAR).hexdigest() and rec.size == len(EICAR)
    assert (rec.uid, rec.gid, rec.mode, rec.mtime_ns, rec.atime_ns) == (
        1234, 1234, before.st_mode, before.st_mtime_ns, before.st_atime_ns)
    assert rec.xattrs == {"user.origin": b"downloaded\x00from somewhere"}
    assert rec.quarantined_at is not None and rec.detected_at is not None

    # Neutralised storage: root-only dir, 0400 file named by the id, content not the original.
    assert os.stat(q.root).st_mode & 0o7777 == 0o700 and os.stat(q.root).st_uid == 0
    stored = q.root / rec.id
    assert os.listdir(q.root) == [rec.id]
    st = os.stat(stored)
    assert st.st_mode & 0o7777 == 0o400 and (st.st_uid, st.st_gid) == (0, 0)
    raw = stored.read_bytes()
    assert raw.startswith(MAGIC) and EICAR not in raw and b"EICAR" not in raw
    assert q.read_content(rec.id) == EICAR
    assert [r.id for r in q.list()] == [rec.id]

    restored = q.restore(rec.id)

    assert restored == bytes(victim)
    after = os.stat(victim)  # before reading it back: a read may move atime
    assert victim.read_bytes() == EICAR
    assert (after.st_uid, after.st_gid, after.st_mode, after.st_mtime_ns, after.st_atime_ns) == (
        1234, 1234, before.st_mode, before.st_mtime_ns, before.st_atime_ns)
    assert os.getxattr(victim, "user.origin") == b"downloaded\x00from somewhere"
    assert q.list() == [] and os.listdir(q.root) == []
    store = Store(state / "verdicts.db")
    assert store.allowed(rec.sha256)
    [entry] = store.allow_list()
    assert entry["reason"] == f"restored from quarantine {rec.id}" and entry["path"] == str(victim)


def test_stored_copy_does_not_match_yara_even_with_xor_modifier(src: Path, state: Path) -> None:
    import yara  # a hard dependency of onaccess: no skip
    text = EICAR.decode().replace("\\", "\\\\")
    rules = yara.compile(source='rule e { strings: $a = "%s" xor condition: $a }' % text)
    victim = src / "x"
    write_file(victim, b"junk" * 100 + EICAR + b"junk" * 100)
    assert rules.match(str(victim)), "the rule must match the original for this test to mean anything"
    q = make_q(state)
    rec = q.quarantine_path(bytes(victim), ["e"])
    assert rules.match(str(q.root / rec.id)) == []


def test_quarantine_fd_works_from_worker_threads(src: Path, state: Path) -> None:
    q = make_q(state)
    files = []
    for i in range(8):
        p = src / f"f{i}"
        write_file(p, EICAR + str(i).encode())
        files.append(p)

    def one(p: Path) -> str:
        fd = os.open(p, os.O_RDONLY)
        try:
            rec = q.quarantine_fd(fd, bytes(p), ["EICAR"], "open")
            os.fstat(fd)  # the caller's fd is still open
            return rec.id
        finally:
            os.close(fd)

    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(one, files))
    assert threading.current_thread() is threading.main_thread()
    assert len(set(ids)) == 8 and not any(p.exists() for p in files)
    assert sorted(q.read_content(i) for i in ids) == sorted(EICAR + str(i).encode() for i in range(8))


def test_renamed_file_is_followed_by_its_fd_and_the_new_file_at_its_name_is_left_alone(src: Path,
                                                                                       state: Path) -> None:
    q = make_q(state)
    victim = src / "v"
    write_file(victim, EICAR)
    fd = os.open(victim, os.O_RDONLY)
    try:
        os.rename(victim, src / "moved")
        write_file(victim, b"an innocent file that took its name")
        rec = q.quarantine_fd(fd, bytes(victim), ["EICAR"], "open")
    finally:
        os.close(fd)
    # The detected inode is quarantined under the kernel's current name for it.
    assert rec.original_path == bytes(src / "moved") and not (src / "moved").exists()
    assert victim.read_bytes() == b"an innocent file that took its name"
    assert q.read_content(rec.id) == EICAR


def test_quarantine_fd_without_a_path_uses_the_kernels_name(src: Path, state: Path) -> None:
    q = make_q(state)
    write_file(src / "v", EICAR)
    fd = os.open(src / "v", os.O_RDONLY)
    try:
        rec = q.quarantine_fd(fd, None, ["EICAR"], "open")
    finally:
        os.close(fd)
    assert rec.original_path == bytes(src / "v") and not (src / "v").exists()


def test_deleted_file_is_not_quarantined(src: Path, state: Path) -> None:
    q = make_q(state)
    victim = src / "v"
    write_file(victim, EICAR)
    fd = os.open(victim, os.O_RDONLY)
    try:
        victim.unlink()
        write_file(victim, b"an innocent file that took its name")
        with pytest.raises(QuarantineError, match="deleted before"):
            q.quarantine_fd(fd, bytes(victim), ["EICAR"], "open")
    finally:
        os.close(fd)
    assert victim.read_bytes() == b"an innocent file that took its name"
    assert q.list() == []


def test_symlink_is_never_followed(src: Path, state: Path) -> None:
    q = make_q(state)
    target = src / "real"
    write_file(target, EICAR)
    (src / "link").symlink_to(target)
    with pytest.raises(QuarantineError, match="cannot open"):
        q.quarantine_path(bytes(src / "link"), ["EICAR"])
    assert target.read_bytes() == EICAR and (src / "link").is_symlink()


def test_quarantine_through_symlinked_directory_uses_the_real_name(src: Path, state: Path) -> None:
    q = make_q(state)
    (src / "real").mkdir()
    write_file(src / "real" / "v", EICAR)
    (src / "alias").symlink_to(src / "real")
    rec = q.quarantine_path(bytes(src / "alias" / "v"), ["EICAR"])
    assert rec.original_path == bytes(src / "real" / "v")
    assert not (src / "real" / "v").exists() and (src / "alias").is_symlink()


def test_hard_link_remaining_is_recorded(src: Path, state: Path) -> None:
    q = make_q(state)
    write_file(src / "a", EICAR)
    os.link(src / "a", src / "b")
    rec = q.quarantine_path(bytes(src / "a"), ["EICAR"])
    assert not (src / "a").exists()
    assert rec.detail and "1 other hard link" in rec.detail


_CHILD = """
import os, sys
from pathlib import Path
from scanner.quarantine import Quarantine
q = Quarantine(Path(sys.argv[1]), Path(sys.argv[2]))
op = sys.argv[3]
if op == "quarantine":
    fd = os.open(sys.argv[4], os.O_RDONLY)
    q.quarantine_fd(fd, os.fsencode(sys.argv[4]), ["EICAR"], "exec")
elif op == "restore":
    q.restore(sys.argv[4])
elif op == "delete":
    q.delete(sys.argv[4])
print("no crash")
"""


def run_child(state: Path, point: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **{CRASH_ENV: point, "PYTHONPATH": str(REPO)})
    return subprocess.run(
        [sys.executable, "-c", _CHILD, str(state / "verdicts.db"), str(state / "quarantine"), *args],
        env=env, capture_output=True, text=True, timeout=90,
    )


@pytest.mark.parametrize("point,expect_original", [
    ("after-journal", True),   # rolled back
    ("after-copy", False),     # the crash the issue asks for: copy on disk, original not yet unlinked
    ("after-unlink", False),   # finished
])
def test_crash_during_cross_fs_move_leaves_exactly_one_copy(point: str, expect_original: bool, src: Path,
                                                             state: Path) -> None:
    victim = src / "eicar.bin"
    data = EICAR + os.urandom(3 << 20)  # several chunks
    write_file(victim, data)
    proc = run_child(state, point, "quarantine", str(victim))
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    q = make_q(state)
    [row] = q.list()
    assert row.state == {"after-journal": "pending", "after-copy": "copied", "after-unlink": "copied"}[point]
    if point == "after-copy":
        # Really between copy and unlink: both exist right now.
        assert victim.exists() and (q.root / row.id).exists()

    assert q.recover() == [row.id]

    assert victim.exists() == expect_original
    assert copies_of(data, q, src) == 1
    if expect_original:
        assert victim.read_bytes() == data and q.list() == [] and os.listdir(q.root) == []
    else:
        [rec] = q.list()
        assert rec.state == "done" and q.read_content(rec.id) == data and os.listdir(q.root) == [rec.id]
        assert rec.detail is None
    assert q.recover() == []  # idempotent


def test_recover_leaves_a_replaced_original_alone(src: Path, state: Path) -> None:
    victim = src / "v"
    write_file(victim, EICAR)
    assert run_child(state, "after-copy", "quarantine", str(victim)).returncode == -signal.SIGKILL
    victim.unlink()
    write_file(victim, b"new content written after the crash")
    q = make_q(state)
    q.recover()
    [rec] = q.list()
    assert victim.read_bytes() == b"new content written after the crash"
    assert q.read_content(rec.id) == EICAR and rec.state == "done" and "left in place" in (rec.detail or "")


@pytest.mark.parametrize("point,restored", [("restore-after-tmp", False), ("restore-after-link", True)])
def test_crash_during_restore(point: str, restored: bool, src: Path, state: Path) -> None:
    q = make_q(state)
    victim = src / "v"
    before = write_file(victim, EICAR)
    rec = q.quarantine_path(bytes(victim), ["EICAR"])
    proc = run_child(state, point, "restore", rec.id)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert q.show(rec.id).state == "restoring"

    assert q.recover() == [rec.id]

    assert os.listdir(src) == (["v"] if restored else [])  # no temp file left behind
    assert copies_of(EICAR, q, src) == 1
    store = Store(state / "verdicts.db")
    if restored:
        assert victim.read_bytes() == EICAR and os.stat(victim).st_mtime_ns == before.st_mtime_ns
        assert q.list() == [] and store.allowed(rec.sha256)
    else:
        assert q.show(rec.id).state == "done" and not store.allowed(rec.sha256)
        q.restore(rec.id)  # and it can still be restored
        assert victim.read_bytes() == EICAR


def test_crash_during_delete_is_finished(src: Path, state: Path) -> None:
    q = make_q(state)
    write_file(src / "v", EICAR)
    rec = q.quarantine_path(bytes(src / "v"), ["EICAR"])
    assert run_child(state, "delete-after-unlink", "delete", rec.id).returncode == -signal.SIGKILL
    assert q.recover() == [rec.id]
    assert q.list() == [] and os.listdir(q.root) == []


@pytest.mark.parametrize("db_on_full_fs", [False, True])
def test_full_disk_fails_cleanly(db_on_full_fs: bool, src: Path, tmp_path: Path) -> None:
    victim = src / "big"
    data = EICAR + os.urandom(2 << 20)
    before = write_file(victim, data)
    with tmpfs_mount("1m") as small:
        db = (small if db_on_full_fs else tmp_path) / "verdicts.db"
        q = Quarantine(db, small / "quarantine")
        with pytest.raises(QuarantineError, match="quarantine storage is full.*original is left in place"):
            q.quarantine_path(bytes(victim), ["EICAR"])
        after = os.stat(victim)
        assert victim.read_bytes() == data
        assert (after.st_ino, after.st_mtime_ns, after.st_ctime_ns) == (before.st_ino, before.st_mtime_ns,
                                                                        before.st_ctime_ns)
        assert q.list() == []  # journal rolled back
        assert os.listdir(small / "quarantine") == []
        assert q.recover() == []
        q.close()


def test_restore_missing_id(state: Path) -> None:
    with pytest.raises(QuarantineError, match="no quarantined file with id 'nope'"):
        make_q(state).restore("nope")


def test_restore_when_original_directory_is_gone(src: Path, state: Path, tmp_path: Path) -> None:
    q = make_q(state)
    (src / "d").mkdir()
    write_file(src / "d" / "v", EICAR)
    rec = q.quarantine_path(bytes(src / "d" / "v"), ["EICAR"])
    os.rmdir(src / "d")
    with pytest.raises(QuarantineError, match="--to"):
        q.restore(rec.id)
    assert not (src / "d").exists() and q.show(rec.id).state == "done"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # --to an existing directory: the original file name inside it.
    assert q.restore(rec.id, to=str(elsewhere)) == bytes(elsewhere / "v")
    assert (elsewhere / "v").read_bytes() == EICAR


@pytest.mark.parametrize("to", [b"../../etc/passwd", b"passwd", b"/tmp/x/../../etc/passwd", b""])
def test_restore_refuses_relative_or_dotdot_targets(to: bytes, src: Path, state: Path) -> None:
    q = make_q(state)
    write_file(src / "v", EICAR)
    rec = q.quarantine_path(bytes(src / "v"), ["EICAR"])
    passwd = Path("/etc/passwd").read_bytes()
    cwd_before = sorted(os.listdir("."))
    with pytest.raises(QuarantineError, match="not absolute|contains '..'"):
        q.restore(rec.id, to=to)
    assert Path("/etc/passwd").read_bytes() == passwd
    assert sorted(os.listdir(".")) == cwd_before
    assert q.show(rec.id).state == "done" and q.read_content(rec.id) == EICAR
    assert not Store(state / "verdicts.db").allowed(rec.sha256)


def test_restore_through_symlinked_directory_is_refused(src: Path, state: Path, tmp_path: Path) -> None:
    q = make_q(state)
    write_file(src / "v", EICAR)
    rec = q.quarantine_path(bytes(src / "v"), ["EICAR"])
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    with pytest.raises(QuarantineError, match="cannot restore into"):
        q.restore(rec.id, to=bytes(tmp_path / "alias" / "v"))
    assert os.listdir(tmp_path / "real") == []


def test_restore_onto_existing_file_needs_force(src: Path, state: Path) -> None:
    q = make_q(state)
    victim = src / "v"
    write_file(victim, EICAR)
    rec = q.quarantine_path(bytes(victim), ["EICAR"])
    write_file(victim, b"a newer file", uid=0, gid=0, mode=0o600)
    with pytest.raises(QuarantineError, match="exists; use --force"):
        q.restore(rec.id)
    assert victim.read_bytes() == b"a newer file" and sorted(os.listdir(src)) == ["v"]
    assert q.show(rec.id).state == "done"
    assert not Store(state / "verdicts.db").allowed(rec.sha256)
    q.restore(rec.id, force=True)
    assert victim.read_bytes() == EICAR and os.stat(victim).st_uid == 1234
    assert sorted(os.listdir(src)) == ["v"]


def test_non_utf8_path_round_trips(src: Path, state: Path) -> None:
    q = make_q(state)
    name = bytes(src) + b"/caf\xe9-\xff\xfe.bin"
    write_file(name, EICAR)
    rec = q.quarantine_path(name, ["EICAR"])
    assert rec.original_path == name and not os.path.exists(name)
    as_json = q.list()[0].as_json()
    assert os.fsencode(as_json["original_path"]) == name
    assert q.restore(rec.id) == name
    with open(name, "rb") as f:
        assert f.read() == EICAR
    assert os.listdir(bytes(src)) == [os.path.basename(name)]


def test_delete_and_purge(src: Path, state: Path) -> None:
    q = make_q(state)
    ids = []
    for i in range(3):
        write_file(src / f"f{i}", EICAR + bytes([i]))
        ids.append(q.quarantine_path(bytes(src / f"f{i}"), ["EICAR"]).id)
    db = Store(state / "verdicts.db")
    day = 86400
    db.table("quarantine").update(ids[0], {"quarantined_at": time.time() - 10 * day})
    db.table("quarantine").update(ids[1], {"quarantined_at": time.time() - 3 * day})

    assert q.purge(5) == 1
    assert sorted(r.id for r in q.list()) == sorted(ids[1:])
    assert not (q.root / ids[0]).exists()
    q.delete(ids[2])
    assert [r.id for r in q.list()] == [ids[1]] and os.listdir(q.root) == [ids[1]]
    with pytest.raises(QuarantineError, match="no quarantined file"):
        q.delete(ids[2])
    with pytest.raises(QuarantineError, match="zero or more"):
        q.purge(-1)
    assert q.purge(0) == 1 and q.list() == [] and os.listdir(q.root) == []


def test_damaged_stored_copy_is_not_restored(src: Path, state: Path) -> None:
    q = make_q(state)
    write_file(src / "v", EICAR)
    rec = q.quarantine_path(bytes(src / "v"), ["EICAR"])
    stored = q.root / rec.id
    os.chmod(stored, 0o600)
    with open(stored, "r+b") as f:
        f.seek(len(MAGIC) + 32 + 3)
        f.write(b"\x00")
    with pytest.raises(QuarantineError, match="damaged"):
        q.restore(rec.id)
    assert os.listdir(src) == [] and q.show(rec.id).state == "done"


def test_read_only_filesystem_leaves_the_original_and_a_clean_journal(src: Path, state: Path) -> None:
    q = make_q(state)
    victim = src / "v"
    write_file(victim, EICAR)
    subprocess.run(["mount", "-o", "remount,ro", str(src)], check=True)
    try:
        with pytest.raises(QuarantineError, match="cannot remove .*Read-only file system; left in place"):
            q.quarantine_path(bytes(victim), ["EICAR"])
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(src)], check=True)
    assert victim.read_bytes() == EICAR
    assert q.list() == [] and os.listdir(q.root) == []


def test_restore_keeps_an_admins_own_allow_list_entry(src: Path, state: Path) -> None:
    q = make_q(state)
    write_file(src / "v", EICAR)
    rec = q.quarantine_path(bytes(src / "v"), ["EICAR"])
    store = Store(state / "verdicts.db")
    store.allow_add(rec.sha256, reason="vendor test file")
    q.restore(rec.id)
    assert [e["reason"] for e in store.allow_list()] == ["vendor test file"]


# --- with the daemon: the acceptance, end to end ------------------------------------------
ALL_QUARANTINE = {"exec": "quarantine", "open": "quarantine", "write": "quarantine", "on-demand": "quarantine"}
MARKER = b"ONACCESS-QTEST-" + b"BIG-FILE-MARKER"  # split: this file must not match the rule


@pytest.fixture
def big_rule(tmp_path: Path) -> Path:
    """A rule that matches big files (the bundled EICAR rule only matches files of <= 128 bytes)."""
    rules = tmp_path / "rules.d"
    rules.mkdir()
    (rules / "big.yar").write_text('rule qtest_big { strings: $m = "%s" condition: $m }\n' % MARKER.decode())
    return rules


def wait_until(predicate, timeout: float = 15.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(0.05)


def cli_json(d, *args: str | bytes):  # type: ignore[no-untyped-def]
    r = d.cli(*args, "--json", check=False)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_daemon_quarantines_detection_and_restore_is_allowed(src: Path, tmp_path: Path, daemon_factory) -> None:
    from oatest import try_open

    hook_out = tmp_path / "hook.json"
    hook = f"{sys.executable} -c \"import sys; open({str(hook_out)!r}, 'a').write(sys.stdin.read())\""
    d = daemon_factory([src], {"actions": ALL_QUARANTINE, "on_detect": hook})
    victim = src / "eicar.com"
    before = write_file(victim, EICAR, mode=0o755)
    try_open(victim)  # whichever event catches it (close-write or this open), it is quarantined
    wait_until(lambda: not victim.exists(), what="original removed by the daemon")

    [item] = cli_json(d, "quarantine", "list")
    assert item["original_path"] == str(victim) and item["sha256"] == hashlib.sha256(EICAR).hexdigest()
    assert item["state"] == "done" and item["rules"]
    def hook_events() -> list[dict]:
        text = hook_out.read_text() if hook_out.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line.endswith("}")]

    wait_until(lambda: any(e.get("quarantine_id") == item["id"] for e in hook_events()), what="hook run")
    [event] = [e for e in hook_events() if e.get("quarantine_id") == item["id"]]
    assert event["path"] == str(victim) and event["verdict"] == "dangerous" and event["rules"] == item["rules"]

    restored = cli_json(d, "quarantine", "restore", item["id"])
    assert restored["restored_to"] == str(victim)
    after = os.stat(victim)
    assert (after.st_uid, after.st_gid, after.st_mode, after.st_mtime_ns) == (
        1234, 1234, before.st_mode, before.st_mtime_ns)
    assert try_open(victim) == 0  # allow-listed: SAFE without a scan
    time.sleep(1.0)  # give a wrong re-detection time to happen
    assert victim.read_bytes() == EICAR and cli_json(d, "quarantine", "list") == []


def test_daemon_killed_between_copy_and_unlink_recovers_on_restart(src: Path, tmp_path: Path, big_rule: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from oatest import start_daemon, try_open

    state_dir = tmp_path / "state"  # root fs: the move from tmpfs is cross-filesystem
    victim = src / "detected.bin"
    data = MARKER + os.urandom(3 << 20)  # several copy chunks
    write_file(victim, data)
    settings = {"actions": ALL_QUARANTINE, "rule_dirs": [str(big_rule)]}
    monkeypatch.setenv(CRASH_ENV, "after-copy")
    d = start_daemon([src], state_dir, settings)
    try:
        assert try_open(victim) == errno.EPERM  # answered before the action thread kills the daemon
        d.proc.wait(timeout=30)
        assert d.proc.returncode == -signal.SIGKILL
    finally:
        d.stop(signal.SIGKILL)
    monkeypatch.delenv(CRASH_ENV)
    q = make_q(state_dir)
    [row] = q.list()
    assert row.state == "copied" and victim.exists() and (q.root / row.id).exists()  # two copies right now

    d = start_daemon([src], state_dir, settings)  # recover() runs at start
    try:
        [item] = cli_json(d, "quarantine", "list")
        assert item["state"] == "done"
        assert not victim.exists()
        assert copies_of(data, q, src) == 1 and q.read_content(item["id"]) == data
    finally:
        d.stop()


def test_daemon_full_quarantine_disk_still_denies_and_keeps_original(src: Path, big_rule: Path,
                                                                     daemon_factory) -> None:
    from oatest import try_open

    with tmpfs_mount("3m") as small:
        d = daemon_factory([src], {"actions": ALL_QUARANTINE, "rule_dirs": [str(big_rule)]},
                           state_dir=small / "state")
        try:
            victim = src / "big"
            data = MARKER + os.urandom(4 << 20)
            before = write_file(victim, data)
            assert try_open(victim) == errno.EPERM
            wait_until(lambda: any(e.get("event") == "quarantine_failed" for e in d.log_events()),
                       what="quarantine_failed logged")
            failed = [e for e in d.log_events() if e.get("event") == "quarantine_failed"]
            assert "quarantine storage is full" in json.dumps(failed)
            assert try_open(victim) == errno.EPERM  # still denied afterwards
            assert cli_json(d, "quarantine", "list") == []
            assert os.listdir(small / "state" / "quarantine") == []
            after = os.stat(victim)
            assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size,
                                                                        before.st_mtime_ns)
        finally:
            d.stop()
        assert victim.read_bytes() == data  # with the daemon stopped, the original reads back intact

"""Loader-level tests of the BPF LSM fast path (scanner/bpf.py + bpf/verdict.bpf.o).

They run inside the VM (tests/vm/run) on a kernel booted with lsm=...,bpf and need no daemon:
the test process plays the daemon, writing verdicts by fd and reading the ring buffer.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scanner import bpf

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
GEN = 7


def run(path: Path) -> int:
    return subprocess.run([str(path)], timeout=30).returncode


def assert_exec_denied(path: Path) -> None:
    with pytest.raises(PermissionError) as ei:
        run(path)
    assert ei.value.errno == errno.EPERM


def mark(kv: bpf.KernelVerdicts, path: Path, dangerous: bool = True, gen: int = GEN) -> os.stat_result:
    """Store a verdict for path the way the daemon does: through an fd, with the scan-time ctime."""
    kv.set_generation(GEN)
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        kv.put(fd, dangerous, gen, st.st_ctime_ns)
    finally:
        os.close(fd)
    return st


def stored(kv: bpf.KernelVerdicts, path: Path) -> tuple[int, int, int] | None:
    # O_PATH: the lookup must not itself go through file_open's write/read logic.
    fd = os.open(path, os.O_PATH)
    try:
        return kv.get(fd)
    finally:
        os.close(fd)


def self_comm() -> str:
    return Path("/proc/self/comm").read_text().strip()


def test_load_attach_pin(kv: bpf.KernelVerdicts, pin_dir: Path) -> None:
    assert kv.reused is False
    assert kv.map_id > 0
    names = set(os.listdir(pin_dir))
    assert {"oa_verdicts", "oa_config", "oa_events"} <= names
    hooks = {p.hook for p in kv.programs}
    assert {"bprm_check_security", "file_open", "mmap_file", "path_truncate"} <= hooks
    # file_truncate exists from 6.2 on; its presence must follow the kernel, not a guess.
    kernel_has = b"bpf_lsm_file_truncate" in Path("/sys/kernel/btf/vmlinux").read_bytes()
    assert ("file_truncate" in hooks) == kernel_has
    for p in kv.programs:
        assert f"link_{p.name}" in names
    assert kv.config() == (0, 0)


def test_dangerous_exec_denied_and_reported(kv: bpf.KernelVerdicts, true_copy: Path) -> None:
    assert run(true_copy) == 0
    st = mark(kv, true_copy)
    assert stored(kv, true_copy) == (bpf.VERDICT_DANGEROUS, GEN, st.st_ctime_ns)
    assert_exec_denied(true_copy)
    r, _, _ = select.select([kv.ring_fd()], [], [], 5)
    assert r, "ring buffer fd did not become readable after a denial"
    blocks = kv.consume()
    assert len(blocks) == 1
    b = blocks[0]
    assert (b.ino, b.dev, b.hook) == (st.st_ino, st.st_dev, "exec")
    assert b.uid == os.getuid()
    assert b.tgid != os.getpid() and b.tgid == b.pid  # the forked child, single-threaded
    assert b.comm == self_comm()[:15]
    assert kv.consume() == []


def test_safe_exec_allowed(kv: bpf.KernelVerdicts, true_copy: Path) -> None:
    mark(kv, true_copy, dangerous=False)
    assert stored(kv, true_copy)[0] == bpf.VERDICT_SAFE
    assert run(true_copy) == 0
    with open(true_copy, "rb") as f:
        assert f.read(4) == b"\x7fELF"
    assert kv.consume() == []


def test_other_files_unaffected(kv: bpf.KernelVerdicts, true_copy: Path, tmpfs: Path) -> None:
    other = tmpfs / "other"
    other.write_bytes(true_copy.read_bytes())
    other.chmod(0o755)
    mark(kv, true_copy)
    assert run(other) == 0
    assert stored(kv, other) is None


def test_generation_bump_ignores_entry(kv: bpf.KernelVerdicts, true_copy: Path) -> None:
    mark(kv, true_copy)
    assert_exec_denied(true_copy)
    kv.set_generation(GEN + 1)
    assert run(true_copy) == 0
    kv.set_generation(GEN)
    assert_exec_denied(true_copy)


def test_ctime_change_ignores_entry(kv: bpf.KernelVerdicts, true_copy: Path) -> None:
    st = mark(kv, true_copy)
    assert_exec_denied(true_copy)
    # ctime ticks with the coarse clock: wait past a tick so the change is visible.
    time.sleep(0.05)
    os.chmod(true_copy, 0o700)  # metadata change: no write-open, so only ctime can tell
    assert os.stat(true_copy).st_ctime_ns != st.st_ctime_ns
    assert stored(kv, true_copy) is not None  # still there, but stale
    assert run(true_copy) == 0


def test_write_open_deletes_entry(kv: bpf.KernelVerdicts, true_copy: Path) -> None:
    mark(kv, true_copy)
    # Allowed even though DANGEROUS (repair in place), and the verdict is dropped.
    fd = os.open(true_copy, os.O_WRONLY)
    os.close(fd)
    assert stored(kv, true_copy) is None
    assert run(true_copy) == 0


def test_truncate_by_path_deletes_entry(kv: bpf.KernelVerdicts, true_copy: Path) -> None:
    mark(kv, true_copy)
    size = true_copy.stat().st_size
    os.truncate(true_copy, size)  # same size: only the hook can have removed the entry
    assert stored(kv, true_copy) is None


def test_ftruncate_of_earlier_fd_deletes_entry(kv: bpf.KernelVerdicts, true_copy: Path) -> None:
    # The writable fd predates the verdict, so the write-open hook cannot have seen it.
    wfd = os.open(true_copy, os.O_WRONLY)
    try:
        mark(kv, true_copy)
        assert stored(kv, true_copy) is not None
        os.ftruncate(wfd, true_copy.stat().st_size)
        assert stored(kv, true_copy) is None
    finally:
        os.close(wfd)


def test_open_readonly_denied(kv: bpf.KernelVerdicts, true_copy: Path) -> None:
    st = mark(kv, true_copy)
    with pytest.raises(PermissionError) as ei:
        open(true_copy, "rb")
    assert ei.value.errno == errno.EPERM
    blocks = kv.consume()
    assert [(b.hook, b.ino, b.tgid) for b in blocks] == [("open", st.st_ino, os.getpid())]


def test_mmap_exec_denied(kv: bpf.KernelVerdicts, true_copy: Path) -> None:
    fd = os.open(true_copy, os.O_RDONLY)  # opened before the verdict, as a loader would have
    try:
        st = os.fstat(fd)
        kv.set_generation(GEN)
        kv.put(fd, True, GEN, st.st_ctime_ns)
        with mmap.mmap(fd, 4096, prot=mmap.PROT_READ) as m:  # plain read mapping is fine
            assert m[:4] == b"\x7fELF"
        assert kv.consume() == []
        with pytest.raises(PermissionError) as ei:
            mmap.mmap(fd, 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC)
        assert ei.value.errno == errno.EPERM
        assert [(b.hook, b.ino) for b in kv.consume()] == [("mmap", st.st_ino)]
    finally:
        os.close(fd)


def test_exempt_tgid(kv: bpf.KernelVerdicts, true_copy: Path) -> None:
    mark(kv, true_copy)
    kv.set_exempt_tgid(os.getpid())
    assert kv.config() == (GEN, os.getpid())
    with open(true_copy, "rb") as f:  # the daemon can still read (rescan, quarantine)
        assert f.read(4) == b"\x7fELF"
    assert_exec_denied(true_copy)  # children are other tgids
    kv.set_exempt_tgid(0)
    with pytest.raises(PermissionError):
        open(true_copy, "rb")


LOADER = """
import json, os, sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from scanner import bpf
kv = bpf.KernelVerdicts.open(Path({obj!r}), Path({pin!r}))
kv.set_generation({gen})
fd = os.open({target!r}, os.O_RDONLY)
kv.put(fd, True, {gen}, os.fstat(fd).st_ctime_ns)
print(json.dumps({{"map_id": kv.map_id, "reused": kv.reused}}))
"""


def test_pinned_enforcement_survives_loader_exit(
    obj_path: Path, pin_dir: Path, true_copy: Path
) -> None:
    code = LOADER.format(repo=str(REPO), obj=str(obj_path), pin=str(pin_dir), gen=GEN, target=str(true_copy))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded["reused"] is False
    # The loader process is gone; only the pins hold the programs and the map.
    assert_exec_denied(true_copy)

    kv = bpf.KernelVerdicts.open(obj_path, pin_dir)
    try:
        assert kv.reused is True
        assert kv.map_id == loaded["map_id"]
        assert stored(kv, true_copy)[0] == bpf.VERDICT_DANGEROUS
        assert kv.config()[0] == GEN
        assert [b.hook for b in kv.consume()] == ["exec"]  # the record waited in the ring
    finally:
        kv.close()

    assert bpf.unload(pin_dir) is True
    assert not pin_dir.exists()
    assert run(true_copy) == 0
    assert bpf.unload(pin_dir) is False


def test_reopen_reuses_same_map(kv: bpf.KernelVerdicts, obj_path: Path, pin_dir: Path, true_copy: Path) -> None:
    mark(kv, true_copy)
    again = bpf.KernelVerdicts.open(obj_path, pin_dir)
    try:
        assert again.reused is True
        assert again.map_id == kv.map_id
        assert stored(again, true_copy)[0] == bpf.VERDICT_DANGEROUS
    finally:
        again.close()
    # The handle closed; enforcement did not.
    assert_exec_denied(true_copy)


def link_prog_ids(pin_dir: Path) -> dict[str, int]:
    out = {}
    for entry in sorted(pin_dir.glob("link_*")):
        fd = bpf._check(bpf.libbpf().bpf_obj_get(os.fsencode(entry)), "link pin")
        try:
            info = bpf._LinkInfo()
            bpf._obj_info(fd, info, "link info")
        finally:
            os.close(fd)
        out[entry.name] = info.prog_id
    return out


def test_broken_pins_are_replaced(kv: bpf.KernelVerdicts, obj_path: Path, pin_dir: Path, true_copy: Path) -> None:
    old_id = kv.map_id
    mark(kv, true_copy)
    # Partial pins (exec link gone). Exec is not cleanly denied any more: the ELF loader's
    # mmap of the binary is, past the point of no return, so the child dies of SIGSEGV.
    exec_prog = link_prog_ids(pin_dir)["link_oa_exec"]
    (pin_dir / "link_oa_exec").unlink()
    assert bpf._wait_progs_gone([exec_prog], 10)  # link release is deferred on newer kernels
    assert run(true_copy) == -11
    fresh = bpf.KernelVerdicts.open(obj_path, pin_dir)
    try:
        assert fresh.reused is False
        assert fresh.map_id != old_id
        assert (pin_dir / "link_oa_exec").exists()
        mark(fresh, true_copy)
        assert_exec_denied(true_copy)
    finally:
        fresh.close()


def test_unload_stops_enforcement(kv: bpf.KernelVerdicts, pin_dir: Path, true_copy: Path) -> None:
    mark(kv, true_copy)
    assert_exec_denied(true_copy)
    assert bpf.unload(pin_dir) is True
    # This process still holds map fds; with the links gone the programs no longer run.
    assert run(true_copy) == 0
    with open(true_copy, "rb"):
        pass


def test_delete_and_missing_entries(kv: bpf.KernelVerdicts, true_copy: Path) -> None:
    fd = os.open(true_copy, os.O_RDONLY)
    try:
        assert kv.get(fd) is None
        kv.delete(fd)  # missing entry: not an error
        kv.put(fd, True, GEN, 123_456_789_012)
        assert kv.get(fd) == (bpf.VERDICT_DANGEROUS, GEN, 123_456_789_012)
        kv.delete(fd)
        assert kv.get(fd) is None
        with pytest.raises(OSError):
            kv.put(-1, True, GEN, 0)
    finally:
        os.close(fd)


def test_prog_stats_count_runs(kv: bpf.KernelVerdicts, true_copy: Path) -> None:
    Path("/proc/sys/kernel/bpf_stats_enabled").write_text("1\n")
    try:
        before = kv.prog_stats()["bprm_check_security"][0]
        for _ in range(5):
            assert run(true_copy) == 0
        after = kv.prog_stats()["bprm_check_security"]
        assert after[0] >= before + 5
        assert after[1] > 0
    finally:
        Path("/proc/sys/kernel/bpf_stats_enabled").write_text("0\n")


def test_other_build_upgrades_programs_keeps_map(
    kv: bpf.KernelVerdicts, obj_path: Path, pin_dir: Path, true_copy: Path, tmp_path: Path
) -> None:
    st = mark(kv, true_copy)
    old_progs = link_prog_ids(pin_dir)
    # Another build of the object: same programs and maps, different bytes.
    newer = tmp_path / "verdict.bpf.o"
    newer.write_bytes(obj_path.read_bytes() + b"\0" * 8)
    up = bpf.KernelVerdicts.open(newer, pin_dir)
    try:
        assert (up.reused, up.upgraded) == (True, True)
        assert up.map_id == kv.map_id
        assert stored(up, true_copy) == (bpf.VERDICT_DANGEROUS, GEN, st.st_ctime_ns)
        new_progs = link_prog_ids(pin_dir)
        assert set(new_progs) == set(old_progs)
        assert not set(new_progs.values()) & set(old_progs.values())
        assert not list(pin_dir.glob("new_*"))
        assert_exec_denied(true_copy)
        assert [b.hook for b in up.consume()] == ["exec"]
    finally:
        up.close()
    again = bpf.KernelVerdicts.open(newer, pin_dir)
    try:
        assert (again.reused, again.upgraded) == (True, False)
        assert link_prog_ids(pin_dir) == new_progs
    finally:
        again.close()

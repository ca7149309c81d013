"""Host tests of the BPF side that need no BPF-LSM kernel: the object builds, carries the
expected programs and maps, its BTF layouts match the ctypes mirror in scanner/bpf.py, its
hand-written kernel types name real kernel fields, and the loader fails with a clear
BpfUnavailable where programs cannot be loaded.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest

from scanner import bpf

REPO = Path(__file__).resolve().parents[1]
VMLINUX = Path("/sys/kernel/btf/vmlinux")

EXPECTED_HOOKS = {
    "oa_exec": "bprm_check_security",
    "oa_open": "file_open",
    "oa_mmap": "mmap_file",
    "oa_path_trunc": "path_truncate",
    "oa_file_trunc": "file_truncate",
}


@pytest.fixture(scope="module")
def obj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh build of the object from the sources in the tree."""
    out = tmp_path_factory.mktemp("bpf") / "verdict.bpf.o"
    subprocess.run([str(REPO / "bpf" / "build.sh"), str(out)], check=True, timeout=120)
    return out


@lru_cache(maxsize=None)
def btf_types(path: str) -> dict[int, dict]:
    out = subprocess.run(
        ["bpftool", "-j", "btf", "dump", "file", path, "format", "raw"],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout
    return {t["id"]: t for t in json.loads(out)["types"]}


def structs(types: dict[int, dict]) -> dict[str, dict]:
    return {t["name"]: t for t in types.values() if t["kind"] == "STRUCT"}


def type_size(types: dict[int, dict], tid: int) -> int:
    t = types[tid]
    if t["kind"] in ("TYPEDEF", "CONST", "VOLATILE"):
        return type_size(types, t["type_id"])
    if t["kind"] == "ARRAY":
        return t["nr_elems"] * type_size(types, t["type_id"])
    if t["kind"] == "PTR":
        return 8
    return t["size"]


def test_object_programs(obj: Path) -> None:
    progs = bpf.object_programs(obj)
    assert {p.name: p.hook for p in progs} == EXPECTED_HOOKS


def test_object_maps_only_the_three(obj: Path) -> None:
    # No .bss/.data/.rodata maps: state a restarted daemon must update lives in pinned maps.
    assert sorted(bpf.object_maps(obj)) == sorted(bpf.MAP_NAMES)


@pytest.mark.parametrize("name", sorted(bpf.SHARED_STRUCTS))
def test_shared_layout_matches_btf(obj: Path, name: str) -> None:
    types = btf_types(str(obj))
    st = structs(types)[name]
    mirror = bpf.SHARED_STRUCTS[name]
    assert st["size"] == ctypes.sizeof(mirror)
    btf_members = [(m["name"], m["bits_offset"] // 8, type_size(types, m["type_id"])) for m in st["members"]]
    ctypes_members = [(f, getattr(mirror, f).offset, getattr(mirror, f).size) for f, _ in mirror._fields_]
    assert btf_members == ctypes_members


def map_value_struct(types: dict[int, dict], map_name: str) -> str:
    var = next(t for t in types.values() if t["kind"] == "VAR" and t["name"] == map_name)
    definition = types[var["type_id"]]
    value = next(m for m in definition["members"] if m["name"] == "value")
    return types[types[value["type_id"]]["type_id"]]["name"]  # PTR -> STRUCT


def test_maps_use_the_shared_structs(obj: Path) -> None:
    types = btf_types(str(obj))
    assert map_value_struct(types, bpf.MAP_VERDICTS) == "verdict_value"
    assert map_value_struct(types, bpf.MAP_CONFIG) == "verdict_config"


def test_core_ctime_flavors_compiled_in(obj: Path) -> None:
    st = structs(btf_types(str(obj)))
    assert [m["name"] for m in st["inode___v61"]["members"]] == ["i_ctime"]
    assert [m["name"] for m in st["inode___v66"]["members"]] == ["__i_ctime"]
    assert [m["name"] for m in st["inode___v611"]["members"]] == ["i_ctime_sec", "i_ctime_nsec"]


def test_kernel_types_name_real_fields(obj: Path) -> None:
    """Every field vmlinux_min.h declares exists in this host kernel's BTF (one ctime flavor)."""
    ours = structs(btf_types(str(obj)))
    kernel = structs(btf_types(str(VMLINUX)))

    def kernel_members(name: str) -> set[str]:
        names: set[str] = set()
        for m in kernel[name]["members"]:
            names.add(m["name"])
        return names

    flavors_matching = []
    for name, st in ours.items():
        if name in bpf.SHARED_STRUCTS or name == "(anon)":
            continue
        base = name.split("___")[0]
        assert base in kernel, f"struct {base} not in kernel BTF"
        declared = {m["name"] for m in st["members"]}
        missing = declared - kernel_members(base)
        if "___" in name:
            if not missing:
                flavors_matching.append(name)
        else:
            assert not missing, f"struct {name}: {sorted(missing)} not in kernel BTF"
    assert len(flavors_matching) == 1, flavors_matching


def test_block_record_decoding() -> None:
    ev = bpf.BlockEvent(tgid=10, pid=11, uid=1000, hook=3, dev=(8 << 20) | 17, ino=42, comm=b"evil")
    b = bpf.KernelBlock.from_record(bytes(ev))
    assert b == bpf.KernelBlock(
        tgid=10, pid=11, uid=1000, comm="evil", dev=os.makedev(8, 17), ino=42, hook="mmap"
    )


def test_probe_shape() -> None:
    p = bpf.probe()
    assert set(p) == {"bpf_lsm", "btf", "inode_storage", "bpffs", "reason"}
    assert isinstance(p["reason"], str)
    assert p["btf"] is VMLINUX.exists()
    if not all(p[k] for k in ("bpf_lsm", "btf", "inode_storage", "bpffs")):
        assert p["reason"]


@pytest.fixture
def bpffs(tmp_path: Path):
    """A bpffs instance of the test's own, so no pin ever lands in the host's /sys/fs/bpf."""
    mnt = tmp_path / "bpffs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "bpf", "onaccess-test", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_loader_on_this_host(obj: Path, bpffs: Path) -> None:
    """Either a clean BpfUnavailable with the reason (no pins left) or a working load."""
    pin = bpffs / "onaccess"
    try:
        kv = bpf.KernelVerdicts.open(obj, pin)
    except bpf.BpfUnavailable as exc:
        msg = str(exc)
        assert msg and "\n" not in msg
        if not bpf.probe()["bpf_lsm"] and bpf.LSM_FILE.exists():
            assert "BPF LSM not active" in msg
        else:  # this kind of host: LSM listed, but the sandbox refuses program loads
            assert msg.startswith("program load failed: EPERM"), msg
        assert not pin.exists()
        return
    try:
        assert kv.reused is False and kv.map_id > 0
    finally:
        kv.close()
        assert bpf.unload(pin) is True


def test_loader_reasons(obj: Path, tmp_path: Path, bpffs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(bpf.BpfUnavailable, match="bpffs not mounted at"):
        bpf.KernelVerdicts.open(obj, tmp_path / "onaccess")
    with pytest.raises(bpf.BpfUnavailable, match="BPF object missing"):
        bpf.KernelVerdicts.open(tmp_path / "nope.o", bpffs / "onaccess")
    lsm = tmp_path / "lsm"
    lsm.write_text("lockdown,capability,landlock\n")
    monkeypatch.setattr(bpf, "LSM_FILE", lsm)
    with pytest.raises(bpf.BpfUnavailable, match="BPF LSM not active: 'bpf' missing"):
        bpf.KernelVerdicts.open(obj, bpffs / "onaccess")
    assert not (bpffs / "onaccess").exists()


def test_unload_without_pins(bpffs: Path) -> None:
    assert bpf.unload(bpffs / "onaccess") is False
    (bpffs / "onaccess").mkdir()
    assert bpf.unload(bpffs / "onaccess") is True
    assert not (bpffs / "onaccess").exists()

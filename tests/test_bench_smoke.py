"""Smoke runs of the benchmarks, so bench/run and bench/peers cannot rot.

Runs `bench/peers --smoke` and `bench/run --smoke` for real (root, a real
onaccess daemon, real mounts), checks the last line is key=value ratios with
positive finite floats, and that the run left no mount, loop device or daemon
behind. A harness test with a daemon that never gets ready checks the
failure path cleans up too.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the benchmark smoke tests need root (mounts, fanotify); run the suite as root")


def _run(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


def _ratios(stdout: str) -> dict[str, float]:
    last = stdout.strip().splitlines()[-1]
    pairs = {}
    for tok in last.split():
        key, sep, val = tok.partition("=")
        assert sep and key, f"last line is not key=value pairs: {last!r}"
        pairs[key] = float(val)
        assert math.isfinite(pairs[key]) and pairs[key] > 0, f"{key}={val} is not a positive ratio"
    assert pairs, "empty last line"
    return pairs


def _info(stdout: str) -> tuple[str, list[int]]:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("info: mount=") and " pids=" in ln]
    assert lines, "the bench did not report its mount and daemon pids"
    fields = dict(tok.split("=", 1) for tok in lines[-1][len("info: "):].split())
    return fields["mount"], [int(p) for p in fields["pids"].split(",") if p]


def _assert_nothing_left(mount: str, pids: list[int]) -> None:
    mounted = [ln.split()[1] for ln in Path("/proc/mounts").read_text().splitlines()]
    assert mount not in mounted, f"{mount} is still mounted"
    run_dir = str(Path(mount).parent)
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert run_dir not in loops, f"loop device still attached:\n{loops}"
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists():
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            assert state == "Z" or mount.encode() not in cmd, f"daemon {pid} still running: {cmd!r}"


def test_peers_smoke_onaccess_vs_baseline() -> None:
    _need_root()
    cp = _run(["bench/peers", "--smoke"], timeout=300)
    assert cp.returncode == 0, f"bench/peers --smoke failed:\n{cp.stdout[-3000:]}\n{cp.stderr[-5000:]}"
    ratios = _ratios(cp.stdout)
    for key in ("w1_exec", "w2_read", "w2_grep", "w3_write_exec", "w4_untar"):
        assert f"onaccess_{key}" in ratios, f"no onaccess ratio for {key}: {ratios}"
    mount, pids = _info(cp.stdout)
    assert pids, "onaccess was never started"
    _assert_nothing_left(mount, pids)


def test_run_smoke_exec_and_open_ratios() -> None:
    _need_root()
    cp = _run(["bench/run", "--smoke"], timeout=300)
    assert cp.returncode == 0, f"bench/run --smoke failed:\n{cp.stdout[-3000:]}\n{cp.stderr[-5000:]}"
    ratios = _ratios(cp.stdout)
    assert {"exec_ratio", "open_ratio"} <= ratios.keys(), ratios
    mount, pids = _info(cp.stdout)
    assert len(pids) == 2, f"expected one daemon per round (2 rounds), got {pids}"
    _assert_nothing_left(mount, pids)


def test_run_fails_loudly_and_cleans_up_when_daemon_never_ready(tmp_path: Path) -> None:
    _need_root()
    fake = tmp_path / "never-ready"
    fake.write_text("#!/bin/sh\necho starting\nexec sleep 600\n")
    fake.chmod(0o755)
    env = dict(os.environ, ONACCESS_BIN=str(fake), ONACCESS_BENCH_READY_TIMEOUT="3")
    cp = _run(["bench/run", "--smoke"], timeout=120, env=env)
    assert cp.returncode == 1, cp.stdout + cp.stderr
    assert "did not print 'ready'" in cp.stderr
    mount = [ln for ln in cp.stdout.splitlines() if ln.startswith("info: run_dir=")][0].split("mount=")[1]
    started = [int(ln.split(" pid ")[1].split(":")[0]) for ln in cp.stderr.splitlines() if "started onaccess" in ln]
    assert started, cp.stderr
    _assert_nothing_left(mount, started)


def test_peers_refuses_when_another_xfs_is_mounted(tmp_path: Path) -> None:
    """fapolicyd's watch_fs=xfs would watch any other xfs too: the bench must not start."""
    _need_root()
    img, mnt = tmp_path / "other.img", tmp_path / "other"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(320 << 20)
    subprocess.run(["mkfs.xfs", "-q", str(img)], check=True, timeout=120)
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True, timeout=60)
    try:
        cp = _run(["bench/peers", "--smoke"], timeout=120)
    finally:
        subprocess.run(["umount", str(mnt)], check=True, timeout=60)
    assert cp.returncode == 1, cp.stdout + cp.stderr
    assert "another xfs filesystem is mounted" in cp.stderr
    assert str(mnt) in cp.stderr
    mount = [ln for ln in cp.stdout.splitlines() if ln.startswith("info: run_dir=")]
    assert not mount, "the bench got as far as mounting its own filesystem"
    assert not [ln for ln in Path("/proc/mounts").read_text().splitlines() if " xfs " in ln]

"""The daemon with the BPF LSM fast path (issue 3 acceptance), inside the VM.

Each test runs its own daemon with a private pin dir under /sys/fs/bpf, on a tmpfs the test
mounted, and stops it by PID.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from oatest import EICAR, ONACCESS, REPO, Daemon, start_daemon, try_exec, try_open
from scanner import bpf

pytestmark = pytest.mark.kernel


@pytest.fixture
def pins() -> Iterator[Path]:
    d = Path("/sys/fs/bpf") / f"onaccess-d-{uuid.uuid4().hex[:8]}"
    yield d
    bpf.unload(d)


@pytest.fixture
def daemons(tmp_path: Path, pins: Path) -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        d.stop()


def start(daemons: list[Daemon], watch: Path, state: Path, pins: Path, **extra: object) -> Daemon:
    # One worker per lane: every extra Python process costs seconds under TCG.
    settings = {"bpf": "require", "bpf_pin_dir": str(pins), "workers": 1, "background_workers": 1, **extra}
    d = start_daemon([watch], state, settings)
    daemons.append(d)
    assert d.status()["mode"] == "bpf+fanotify"
    return d


def eicar_exe(path: Path) -> Path:
    # A shebang keeps exec meaningful (ENOEXEC aside); the EICAR body is what the rules see.
    path.write_bytes(EICAR)
    path.chmod(0o755)
    return path


def test_known_bad_denied_in_kernel_while_daemon_is_stopped(tmpfs: Path, tmp_path: Path, pins: Path,
                                                            daemons: list[Daemon]) -> None:
    bad = eicar_exe(tmpfs / "bad")
    d = start(daemons, tmpfs, tmp_path / "s", pins)
    assert try_open(bad) == errno.EPERM  # scanned in userspace, verdict written to the map
    d.stop()
    assert try_exec(bad) == errno.EPERM  # no daemon: only the BPF program can say no
    assert try_open(bad) == errno.EPERM
    d2 = start(daemons, tmpfs, tmp_path / "s", pins)
    d2.wait_for(lambda s: s["kernel_blocks"] >= 2)
    blocked = [e for e in d2.log_events() if e["event"] == "blocked_in_kernel"]
    assert {e["hook"] for e in blocked} >= {"exec", "open"}
    assert all(e["path"] == str(bad) for e in blocked)
    hist = json.loads(d2.cli("events", "--json").stdout)
    assert any(h["kind"].startswith("kernel-") for h in hist)


def test_warm_exec_of_safe_binary_skips_userspace(tmpfs: Path, tmp_path: Path, pins: Path,
                                                  daemons: list[Daemon]) -> None:
    prog = tmpfs / "true"
    shutil.copy("/bin/true", prog)
    d = start(daemons, tmpfs, tmp_path / "s", pins)
    assert subprocess.run([str(prog)], timeout=60).returncode == 0  # scanned: SAFE, ignore mark
    assert d.status()["scans"] == 1
    before = d.status()["perm_events"]
    for _ in range(100):
        assert subprocess.run([str(prog)], timeout=60).returncode == 0
    assert d.status()["perm_events"] == before


def test_modified_files_go_back_to_userspace(tmpfs: Path, tmp_path: Path, pins: Path,
                                             daemons: list[Daemon]) -> None:
    prog = tmpfs / "true"
    shutil.copy("/bin/true", prog)
    bad = eicar_exe(tmpfs / "bad")
    d = start(daemons, tmpfs, tmp_path / "s", pins, close_write_scan=False)
    assert subprocess.run([str(prog)], timeout=60).returncode == 0
    assert try_open(bad) == errno.EPERM
    scans = d.status()["scans"]
    with open(prog, "ab") as f:
        f.write(b"\0" * 8)
    assert subprocess.run([str(prog)], timeout=60).returncode == 0
    assert d.status()["scans"] == scans + 1
    # The DANGEROUS file rewritten clean: truncate drops the kernel entry, then the new
    # content is scanned and allowed.
    os.truncate(bad, 0)
    with open(bad, "wb") as f:
        f.write(b"#!/bin/sh\nexit 0\n")
    assert try_exec(bad) == 0
    assert try_open(bad) == 0


def test_generation_bump_rescans_safe_files(tmpfs: Path, tmp_path: Path, pins: Path,
                                            daemons: list[Daemon]) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "a.yar").write_text('rule marker_a { strings: $a = "AAAA-MARKER" condition: $a }')
    script = tmpfs / "s.sh"
    script.write_bytes(b"#!/bin/sh\n# BBBB-MARKER\nexit 0\n")
    script.chmod(0o755)
    d = start(daemons, tmpfs, tmp_path / "s", pins, bundled_rules=False, rule_dirs=[str(rules)])
    assert try_exec(script) == 0
    scans = d.status()["scans"]
    (rules / "b.yar").write_text('rule marker_b { strings: $b = "BBBB-MARKER" condition: $b }')
    assert json.loads(d.cli("rules", "reload", "--json").stdout)["changed"]
    assert try_exec(script) == errno.EPERM
    assert d.status()["scans"] > scans


def test_mmap_exec_of_dangerous_object_fails(tmpfs: Path, tmp_path: Path, pins: Path,
                                             daemons: list[Daemon]) -> None:
    lib = tmpfs / "libbad.so"
    # Holder: opened before any verdict existed, keeps its fd; the verdict arrives meanwhile.
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import mmap, os, sys\n"
         "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o755)\n"
         f"os.write(fd, {EICAR!r})\n"
         "print('written', flush=True); sys.stdin.readline()\n"
         "try:\n"
         "    mmap.mmap(fd, 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_EXEC); print('mapped')\n"
         "except OSError as e:\n"
         "    print(e.errno)\n"
         "try:\n"
         "    mmap.mmap(fd, 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ); print('read-mapped')\n"
         "except OSError as e:\n"
         "    print(e.errno)\n",
         str(lib)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "written"
        start(daemons, tmpfs, tmp_path / "s", pins)
        assert try_open(lib) == errno.EPERM  # scanned: DANGEROUS, now in the map
        out, _ = holder.communicate("go\n", timeout=30)
        assert out.split() == [str(errno.EPERM), "read-mapped"]
    finally:
        if holder.poll() is None:
            holder.kill()


def test_restart_reuses_pins_and_unload_then_reseed(tmpfs: Path, tmp_path: Path, pins: Path,
                                                    daemons: list[Daemon]) -> None:
    bad = eicar_exe(tmpfs / "bad")
    state = tmp_path / "s"
    d1 = start(daemons, tmpfs, state, pins)
    assert try_open(bad) == errno.EPERM
    map_id = d1.status()["bpf_map_id"]
    d1.stop()
    d2 = start(daemons, tmpfs, state, pins)
    assert d2.status()["bpf_map_id"] == map_id
    view = json.loads(d2.cli("verdict", "--json", str(bad)).stdout)
    assert isinstance(view["kernel"], dict), view
    assert view["kernel"]["present"] and view["kernel"]["verdict"] == "dangerous"
    d2.stop()
    r = subprocess.run([*ONACCESS, "unload", "--json", "--state-dir", str(state), "--config", str(d2.config)],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert json.loads(r.stdout)["removed"] is True
    assert try_open(bad) == 0  # nothing enforces now (as after a reboot)
    d3 = start(daemons, tmpfs, state, pins)
    assert d3.status()["bpf_map_id"] != map_id
    assert try_open(bad) == errno.EPERM
    s = d3.status()
    assert s["perm_events"] == 0 and s["scans"] == 0, "denied before any scan: re-seeded from SQLite"
    d3.wait_for(lambda s: s["kernel_blocks"] >= 1)


"""Fixtures for the kernel tests (BPF LSM), which run inside the VM booted by tests/vm/run.

Owns: deciding whether this kernel can run them (fail under CI or in the VM, skip on a
developer's host), a private tmpfs per test, and a private pin directory per test that is
unloaded afterwards so one test's programs never leak into the next.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from scanner import bpf
from scanner.paths import bpf_object

REPO = Path(__file__).resolve().parents[2]
BPFFS = Path("/sys/fs/bpf")


def _kernel_ready() -> str | None:
    """None if BPF LSM tests can run here, else why not."""
    if os.geteuid() != 0:
        return "kernel tests need root"
    p = bpf.probe()
    if not p["bpf_lsm"]:
        return f"no BPF LSM on this kernel: {p['reason']}"
    if not p["bpffs"]:
        return f"bpffs not mounted at {BPFFS}"
    if not bpf_object().is_file():
        return f"{bpf_object()} missing (run bpf/build.sh)"
    return None


@pytest.fixture(scope="session", autouse=True)
def kernel_ready() -> None:
    reason = _kernel_ready()
    if reason is None:
        return
    if os.environ.get("CI") == "true" or os.environ.get("ONACCESS_IN_VM") == "1":
        pytest.fail(
            f"kernel tests cannot run: {reason}. Run them with tests/vm/run; on the host deselect"
            " them with -m 'not kernel'",
            pytrace=False,
        )
    pytest.skip(f"{reason} (run tests/vm/run)")


@pytest.fixture
def obj_path() -> Path:
    return bpf_object()


@pytest.fixture
def pin_dir() -> Iterator[Path]:
    d = BPFFS / f"onaccess-test-{uuid.uuid4().hex[:8]}"
    yield d
    bpf.unload(d)


@pytest.fixture
def kv(obj_path: Path, pin_dir: Path) -> Iterator[bpf.KernelVerdicts]:
    k = bpf.KernelVerdicts.open(obj_path, pin_dir)
    yield k
    k.close()


@pytest.fixture
def tmpfs() -> Iterator[Path]:
    """A tmpfs mounted for this test only (never a filesystem we did not create)."""
    d = Path(tempfile.mkdtemp(prefix="onaccess-kt-", dir="/tmp"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "onaccess-kt", str(d)], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)
        d.rmdir()


@pytest.fixture
def true_copy(tmpfs: Path) -> Path:
    """An executable that exits 0, on the test's tmpfs."""
    p = tmpfs / "true-copy"
    shutil.copy2("/bin/true", p)
    p.chmod(0o755)
    return p

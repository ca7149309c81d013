"""Helpers shared by the tests: capability gate, tmpfs mounts, a daemon started/stopped by PID.

Safety: permission marks only ever go on a tmpfs a test mounted; every daemon is stopped by its
PID (SIGTERM, then SIGKILL); every workload that could block runs under a timeout.
"""


from __future__ import annotations

import contextlib

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
ONACCESS = [sys.executable, "-m", "scanner.cli"]
EICAR = (b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-" + b"TEST-FILE!$H+H*")


def need(condition: bool, what: str) -> None:
    """Skip on a developer machine; fail loudly in CI: no silent skips where it matters."""
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {what}", pytrace=False)
    pytest.skip(what)


@contextlib.contextmanager
def tmpfs_mount(size: str = "256m") -> Iterator[Path]:
    """A tmpfs of the test's own: the only kind of filesystem tests put permission marks on."""
    mnt = mount_tmpfs(size)
    try:
        yield mnt
    finally:
        umount(mnt)


def mount_tmpfs(size: str = "256m") -> Path:
    mnt = Path(tempfile.mkdtemp(prefix="oa-mnt-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mnt)], check=True)
    return mnt


def umount(mnt: Path) -> None:
    for _ in range(50):
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode == 0:
            break
        time.sleep(0.1)
    else:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
    shutil.rmtree(mnt, ignore_errors=True)


# Under TCG emulation (the BPF-LSM VM) a Python start-up takes seconds: the daemon and its
# scan workers need far longer to get ready there.
IN_VM = os.environ.get("ONACCESS_IN_VM") == "1"
READY_TIMEOUT = 300.0 if IN_VM else 60.0
CLI_TIMEOUT = 180.0 if IN_VM else 30.0


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    state_dir: Path
    config: Path
    log: Path
    ready_line: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cli(self, *args: str | bytes, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [*ONACCESS, *map(os.fsdecode, args), "--state-dir", str(self.state_dir), "--config", str(self.config)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout or CLI_TIMEOUT, cwd=REPO)
        if check and r.returncode not in (0, 1):
            raise AssertionError(f"{cmd} failed ({r.returncode}): {r.stderr}")
        return r

    def status(self) -> dict[str, Any]:
        return json.loads(self.cli("status", "--json").stdout)

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        if IN_VM:
            timeout *= 10
        end = time.monotonic() + timeout
        while True:
            s = self.status()
            if predicate(s):
                return s
            if time.monotonic() > end:
                raise AssertionError(f"condition not reached; status: {s}")
            time.sleep(0.05)

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        return out

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=20)
        return self.proc.returncode


def write_config(path: Path, settings: dict[str, Any]) -> None:
    lines = []
    for key, value in settings.items():
        lines.append(f"{key} = {json.dumps(value) if not isinstance(value, dict) else _inline(value)}")
    path.write_text("\n".join(lines) + "\n")


def _inline(table: dict[str, Any]) -> str:
    return "{" + ", ".join(f'"{k}" = {json.dumps(v)}' for k, v in table.items()) + "}"


def start_daemon(watch: list[Path], state_dir: Path, settings: dict[str, Any] | None = None,
                 timeout: float = READY_TIMEOUT) -> Daemon:
    state_dir.mkdir(parents=True, exist_ok=True)
    config = state_dir.parent / f"{state_dir.name}.toml"
    base: dict[str, Any] = {"bpf": "off", "rule_dirs": [], "log_file": str(state_dir / "onaccess.log")}
    base.update(settings or {})
    write_config(config, base)
    log = Path(base["log_file"])
    cmd = [*ONACCESS, "run", "--config", str(config), "--state-dir", str(state_dir)]
    for w in watch:
        cmd += ["--watch", str(w)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    d = Daemon(proc, state_dir, config, log)
    assert proc.stdout is not None
    end = time.monotonic() + timeout
    os.set_blocking(proc.stdout.fileno(), False)
    buf = b""
    while time.monotonic() < end:
        chunk = proc.stdout.read()
        if chunk:
            buf += chunk
            if b"ready" in buf:
                d.ready_line = buf.decode(errors="replace").strip()
                return d
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise AssertionError(f"daemon exited {proc.returncode} before ready: {err}")
        time.sleep(0.05)
    d.stop(signal.SIGKILL)
    raise AssertionError("daemon not ready in time")


def run(cmd: list[str | os.PathLike[str]], timeout: float = 10) -> subprocess.CompletedProcess[bytes]:
    """A workload that may block on a permission event: always under a timeout."""
    return subprocess.run([str(c) for c in cmd], capture_output=True, timeout=timeout)


def try_open(path: Path | bytes) -> int:
    """0 if open+read works, else the errno (in a child, under a timeout)."""
    code = ("import os,sys\n"
            "try:\n os.close(os.open(sys.argv[1].encode('utf-8','surrogateescape'), os.O_RDONLY)); print(0)\n"
            "except OSError as e: print(e.errno)")
    r = subprocess.run([sys.executable, "-c", code, os.fsdecode(path)], capture_output=True,
                       timeout=120 if IN_VM else 15)
    return int(r.stdout.strip() or -1)


def try_exec(path: Path) -> int:
    """0 if execve succeeds (the program itself may exit anything), else the errno."""
    try:
        p = subprocess.run([str(path)], capture_output=True, timeout=120 if IN_VM else 15)
        return 0 if p.returncode is not None else -1
    except PermissionError as exc:
        return exc.errno
    except OSError as exc:
        return exc.errno

"""Shared machinery for `bench/run` and `bench/peers`.

Owns: building the C workload drivers (bench/drivers/*.c) into a build dir of
the run, the scratch mounts the workloads run on (tmpfs or a loop-mounted
xfs image), generating the workload data, running each workload under
`timeout` and parsing the drivers' key=value output, starting/stopping
daemons by PID with CPU and peak-RSS accounting, and the cleanup stack that
unmounts and stops everything even when a run fails or is interrupted.

Hands on: numbers (floats per sample) to the two front-end scripts, which
decide what to compare and how to report it. Stdlib only, so the scripts run
under any python3 (the VM guest included); plotting lives in plot_peers.py.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DRIVERS_SRC = BENCH_DIR / "drivers"
DEFAULT_WORK_ROOT = Path(os.environ.get("ONACCESS_BENCH_DIR", "/var/tmp/onaccess-bench"))
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
EPERM = 1
# How long a daemon may take to print "ready" (rule compilation included).
READY_TIMEOUT = float(os.environ.get("ONACCESS_BENCH_READY_TIMEOUT", "180"))
GREP_NEEDLE = "onaccess-bench-needle-that-is-not-there"


class BenchError(RuntimeError):
    """A run that cannot give honest numbers: it stops, loudly."""


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def sh(argv: list[str], *, timeout: float = 120, check: bool = True,
       capture: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    try:
        cp = subprocess.run(argv, timeout=timeout, text=True, env=env,
                            stdout=subprocess.PIPE if capture else None,
                            stderr=subprocess.PIPE if capture else None)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"timed out after {timeout}s: {shlex.join(argv)}") from exc
    if check and cp.returncode != 0:
        raise BenchError(f"exit {cp.returncode}: {shlex.join(argv)}\n{(cp.stderr or '')[-2000:]}")
    return cp


def parse_kv(line: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for tok in line.split():
        if "=" not in tok:
            raise BenchError(f"not key=value: {tok!r} in {line!r}")
        k, v = tok.split("=", 1)
        out[k] = v
    return out


def fmt_kv(pairs: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in pairs.items())


def summary(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


# ---------------------------------------------------------------- cleanup

class Cleanup:
    """A LIFO stack of undo actions, run on normal exit, exception and
    SIGTERM/SIGINT/SIGHUP alike, so no mount, loop device or daemon outlives
    the run. Each action runs even if an earlier one failed."""

    def __init__(self) -> None:
        self._stack: list[tuple[str, Callable[[], None]]] = []

    def push(self, what: str, fn: Callable[[], None]) -> None:
        self._stack.append((what, fn))

    def run_all(self) -> None:
        while self._stack:
            what, fn = self._stack.pop()
            try:
                fn()
            except Exception as exc:  # keep going: the next undo matters as much
                log(f"cleanup step failed ({what}): {exc}")

    @contextlib.contextmanager
    def installed(self) -> Iterator["Cleanup"]:
        def on_signal(signum, _frame):
            raise SystemExit(f"interrupted by signal {signum}")
        old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            yield self
        finally:
            # A second signal during cleanup must not abort the unmounts.
            for s in old:
                signal.signal(s, signal.SIG_IGN)
            self.run_all()
            for s, h in old.items():
                signal.signal(s, h)


# ---------------------------------------------------------------- drivers

@dataclasses.dataclass(frozen=True)
class Drivers:
    dir: Path

    def __getattr__(self, name: str) -> str:  # drivers.spawn_loop -> path
        p = self.dir / name
        if not p.exists():
            raise AttributeError(name)
        return str(p)


def build_drivers(build_dir: Path) -> Drivers:
    build_dir.mkdir(parents=True, exist_ok=True)
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise BenchError(f"no C compiler ({cc}); install build-essential")
    for src in sorted(DRIVERS_SRC.glob("*.c")):
        out = build_dir / src.stem
        if src.stem == "target":
            flags = ["-O2", "-static", "-nostdlib", "-fno-stack-protector", "-s"]
        else:
            flags = ["-O2", "-Wall", "-Wextra"]
        sh([cc, *flags, "-o", str(out), str(src)])
    return Drivers(build_dir)


# ---------------------------------------------------------------- mounts

def mounted_fstypes() -> list[tuple[str, str]]:
    rows = []
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        rows.append((parts[1].replace("\\040", " "), parts[2]))
    return rows


def is_mounted(path: Path) -> bool:
    return any(mp == str(path) for mp, _ in mounted_fstypes())


def _umount(mnt: Path) -> None:
    if not is_mounted(mnt):
        return
    for _ in range(10):
        if sh(["umount", str(mnt)], check=False).returncode == 0:
            return
        time.sleep(0.5)
    # Still busy (a straggler process): detach it so nothing stays visible.
    sh(["umount", "-l", str(mnt)], check=False)


def mount_tmpfs(mnt: Path, cleanup: Cleanup, size: str = "2g") -> Path:
    mnt.mkdir(parents=True, exist_ok=True)
    sh(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "onaccess-bench", str(mnt)])
    cleanup.push(f"umount {mnt}", lambda: _umount(mnt))
    return mnt


def mount_xfs_loop(img: Path, mnt: Path, cleanup: Cleanup, size_gib: int = 4) -> Path:
    """A dedicated xfs filesystem: scanners that mark by filesystem type
    (fapolicyd's watch_fs) or by mount then touch nothing else."""
    others = [mp for mp, t in mounted_fstypes() if t == "xfs"]
    if others:
        raise BenchError(f"refusing to start: another xfs filesystem is mounted ({', '.join(others)}); "
                         "the scanners under test would watch it too")
    if shutil.which("mkfs.xfs") is None:
        raise BenchError("mkfs.xfs missing: apt-get install xfsprogs")
    with open(img, "wb") as f:
        f.truncate(size_gib << 30)
    cleanup.push(f"rm {img}", lambda: img.unlink(missing_ok=True))
    dev = sh(["losetup", "--find", "--show", str(img)]).stdout.strip()
    cleanup.push(f"losetup -d {dev}", lambda: sh(["losetup", "-d", dev], check=False))
    sh(["mkfs.xfs", "-q", "-f", dev])
    mnt.mkdir(parents=True, exist_ok=True)
    sh(["mount", "-t", "xfs", dev, str(mnt)])
    cleanup.push(f"umount {mnt}", lambda: _umount(mnt))
    return mnt


# ---------------------------------------------------------------- processes

def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2:].split()  # fields from #3 (state) on


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int(_stat_fields(int(d.name))[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """utime+stime of a process tree (reaped children via cutime/cstime)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in _descendants(pid):
        try:
            f = _stat_fields(p)
        except OSError:
            continue
        total += int(f[11]) + int(f[12]) + (int(f[13]) + int(f[14]) if p == pid else 0)
    return total / tick


def peak_rss_kib(pid: int) -> int:
    total = 0
    for p in _descendants(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    return total


def settle(cpu: Callable[[], float], timeout: float = 60.0, idle: float = 0.02) -> float:
    """Wait until a daemon stops burning CPU (background scans queued by the
    last workload), so its deferred work is charged to that workload and does
    not slow the next one. Returns the seconds waited."""
    t0 = time.monotonic()
    prev = cpu()
    while time.monotonic() - t0 < timeout:
        time.sleep(0.25)
        now = cpu()
        if now - prev < idle:
            break
        prev = now
    return time.monotonic() - t0


def pid_alive(pid: int) -> bool:
    try:
        state = _stat_fields(pid)[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@dataclasses.dataclass
class Daemon:
    """One process we started; stopped by its PID only."""
    name: str
    proc: subprocess.Popen
    stdout_path: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 30) -> str:
        out = []
        for p in (self.stdout_path, self.stderr_path):
            with contextlib.suppress(OSError):
                lines = p.read_text(errors="replace").splitlines()[-n:]
                out.append(f"--- {p.name}\n" + "\n".join(lines))
        return "\n".join(out)

    def wait_for_output(self, needle: str, timeout: float) -> str:
        """Returns the first stdout line containing `needle`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                for line in self.stdout_path.read_text(errors="replace").splitlines():
                    if needle in line:
                        return line
            if not self.alive():
                raise BenchError(f"{self.name} exited ({self.proc.returncode}) before printing "
                                 f"{needle!r}\n{self.tail()}")
            time.sleep(0.1)
        raise BenchError(f"{self.name} did not print {needle!r} within {timeout}s\n{self.tail()}")

    def stop(self, grace: float = 15.0) -> float:
        """SIGTERM, then SIGKILL after `grace` seconds; returns the seconds it took."""
        t0 = time.monotonic()
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log(f"{self.name} (pid {self.pid}) ignored SIGTERM for {grace}s: SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        return time.monotonic() - t0


def start_daemon(name: str, argv: list[str], logdir: Path, cleanup: Cleanup,
                 env: dict[str, str] | None = None) -> Daemon:
    # Output goes to files, never to a pipe we might stop draining: a daemon
    # blocked on a full stdout pipe would stop answering permission events.
    logdir.mkdir(parents=True, exist_ok=True)
    out, err = logdir / f"{name}.stdout", logdir / f"{name}.stderr"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen(argv, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    d = Daemon(name, proc, out, err)
    cleanup.push(f"stop {name} pid {proc.pid}", d.stop)
    log(f"started {name} pid {proc.pid}: {shlex.join(argv)}")
    return d


# ---------------------------------------------------------------- workloads

@dataclasses.dataclass
class Sizes:
    w1_execs: int = 2000
    w2_files: int = 10_000
    w2_per_dir: int = 100
    w3_files: int = 500
    w4_files: int = 5000
    w4_bytes: int = 100 << 20

    @classmethod
    def smoke(cls) -> "Sizes":
        return cls(w1_execs=200, w2_files=1000, w2_per_dir=100, w3_files=50,
                   w4_files=500, w4_bytes=10 << 20)


@dataclasses.dataclass(frozen=True)
class Workload:
    key: str
    label: str
    unit: str


WORKLOADS = {
    "w1_exec": Workload("w1_exec", "W1 warm exec", "µs/exec"),
    "w2_read": Workload("w2_read", "W2 open+read+close 4 KiB", "µs/file"),
    "w2_grep": Workload("w2_grep", "W2 grep -r", "s"),
    "w3_write_exec": Workload("w3_write_exec", "W3 write+exec new ELF", "µs/file"),
    "w4_untar": Workload("w4_untar", "W4 untar", "s"),
}

_WORDS = ("kernel inode verdict scanner daemon fanotify policy cache exec open read write "
          "module symbol buffer socket thread signal memory device driver packet queue").split()


def _text_block(rng: random.Random, size: int) -> bytes:
    parts, n = [], 0
    while n < size:
        line = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 12))) + "\n"
        parts.append(line)
        n += len(line)
    return "".join(parts).encode()[:size]


def make_tarball(path: Path, files: int, total_bytes: int) -> Path:
    """Generated content, deterministic: text and binary members in 50
    directories, average size total_bytes/files. Made once and cached."""
    if path.exists():
        return path
    rng = random.Random(20261122)
    avg = total_bytes // files
    tmp = path.with_suffix(".tmp")
    with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(files):
            size = rng.randint(avg // 4, avg * 7 // 4)
            data = _text_block(rng, size) if i % 2 else rng.randbytes(size)
            ti = tarfile.TarInfo(f"tree/d{i % 50:02d}/file{i:05d}.{'txt' if i % 2 else 'bin'}")
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 1700000000
            tar.addfile(ti, io.BytesIO(data))
    tmp.rename(path)
    return path


class Workbench:
    """The workloads, on one mount. Every driver runs under `timeout`, so a
    scanner that hangs an access fails the run instead of hanging it."""

    def __init__(self, drivers: Drivers, mnt: Path, cache: Path, sizes: Sizes,
                 timeout: float = 600) -> None:
        self.d, self.mnt, self.cache, self.sizes, self.timeout = drivers, mnt, cache, sizes, timeout
        self.target = mnt / "bin" / "target"
        self.w2dir = mnt / "w2"
        self.tarball: Path | None = None
        self._seq = 0
        # Set by the caller while a daemon runs: waits for its deferred work on
        # the files a workload just wrote, before they are deleted (a daemon
        # that skips deleted files would otherwise be charged too little).
        self.before_cleanup: Callable[[], object] | None = None

    def prepare(self, tarball: bool = True) -> None:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.d.target, self.target)
        self.target.chmod(0o755)
        rng = random.Random(7)
        s = self.sizes
        for i in range(s.w2_files):
            d = self.w2dir / f"d{i // s.w2_per_dir:03d}"
            if i % s.w2_per_dir == 0:
                d.mkdir(parents=True, exist_ok=True)
            (d / f"f{i:05d}").write_bytes(_text_block(rng, 4096))
        if tarball:
            self._tarball()
        sh(["sync"])

    def _tarball(self) -> Path:
        if self.tarball is None:
            s = self.sizes
            self.cache.mkdir(parents=True, exist_ok=True)
            self.tarball = make_tarball(self.cache / f"w4-{s.w4_files}-{s.w4_bytes}.tar", s.w4_files, s.w4_bytes)
        return self.tarball

    def _driver(self, argv: list[str], what: str) -> dict[str, str]:
        cp = sh(["timeout", "-k", "5", str(self.timeout), *argv], timeout=self.timeout + 30, check=False)
        if cp.returncode == 124 or cp.returncode == 137:
            raise BenchError(f"{what} timed out after {self.timeout}s (a blocked access?)")
        lines = [ln for ln in cp.stdout.splitlines() if "=" in ln]
        if cp.returncode != 0 or not lines:
            raise BenchError(f"{what} failed (exit {cp.returncode}): {cp.stdout.strip()} {cp.stderr.strip()[-1000:]}")
        return parse_kv(lines[-1])

    def _fresh_dir(self, stem: str) -> Path:
        self._seq += 1
        p = self.mnt / f"{stem}-{os.getpid()}-{self._seq}"
        p.mkdir()
        return p

    def _remove(self, p: Path) -> None:
        if self.before_cleanup is not None:
            self.before_cleanup()
        sh(["timeout", "-k", "5", str(self.timeout), "rm", "-rf", str(p)], timeout=self.timeout + 30)

    def w1_exec(self, n: int | None = None) -> float:
        r = self._driver([self.d.spawn_loop, str(self.target), str(n or self.sizes.w1_execs)], "W1 exec")
        return float(r["us_per_exec"])

    def w2_read(self) -> float:
        s = self.sizes
        r = self._driver([self.d.read_files, str(self.w2dir), str(s.w2_files), str(s.w2_per_dir)], "W2 read")
        return float(r["us_per_file"])

    def w2_grep(self) -> float:
        r = self._driver([self.d.walltime, "grep", "-r", GREP_NEEDLE, str(self.w2dir)], "W2 grep")
        if r["status"] != "1":  # 1 = read everything, no match; 2 = errors (e.g. EPERM)
            raise BenchError(f"W2 grep -r exited {r['status']} (read errors?)")
        return float(r["wall_s"])

    def w3_write_exec(self) -> float:
        d = self._fresh_dir("w3")
        try:
            r = self._driver([self.d.write_exec, self.d.target, str(d), str(self.sizes.w3_files)], "W3 write+exec")
        finally:
            self._remove(d)
        return float(r["us_per_file"])

    def w4_untar(self) -> float:
        self._tarball()
        d = self._fresh_dir("w4")
        try:
            r = self._driver([self.d.walltime, "tar", "-xf", str(self.tarball), "-C", str(d)], "W4 untar")
            if r["status"] != "0":
                raise BenchError(f"W4 tar exited {r['status']}")
            got = sum(1 for p in d.rglob("*") if p.is_file())
            if got != self.sizes.w4_files:
                raise BenchError(f"W4 untar produced {got} files, expected {self.sizes.w4_files}")
        finally:
            self._remove(d)
        return float(r["wall_s"])

    def run(self, key: str) -> float:
        return getattr(self, key)()

    def warm_up(self) -> None:
        """One pass over what later passes re-read, untimed, so page cache
        and any verdict cache are warm for every configuration alike."""
        self.w1_exec(max(50, self.sizes.w1_execs // 10))
        self.w2_read()

    def probe(self, path: Path) -> dict[str, int]:
        r = self._driver([self.d.probe, str(path)], f"probe {path}")
        return {k: int(v) for k, v in r.items()}


def wait_until_blocks(bench: Workbench, path: Path, timeout: float,
                      alive: Callable[[], bool] = lambda: True) -> dict[str, int]:
    """Poll until opening or executing `path` fails with EPERM; scanners
    that set their marks asynchronously (clamonacc, fapolicyd) have no
    readiness signal of their own."""
    deadline = time.monotonic() + timeout
    last: dict[str, int] = {}
    while time.monotonic() < deadline:
        last = bench.probe(path)
        if last["open_errno"] == EPERM or last["exec_errno"] == EPERM:
            return last
        if not alive():
            break
        time.sleep(0.5)
    raise BenchError(f"scanner does not block {path}: {last} — not measuring a scanner that blocks nothing")


def check_clean_allowed(bench: Workbench) -> None:
    r = bench.probe(bench.target)
    if r["open_errno"] or r["exec_errno"] or r["exec_status"]:
        raise BenchError(f"scanner blocks the clean target binary: {r}")


def write_test_file(path: Path, data: bytes, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    path.chmod(mode)
    return path


def new_run_dir(root: Path = DEFAULT_WORK_ROOT, prefix: str = "run-") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root))


def venv_bin(name: str) -> Path:
    return REPO / ".venv" / "bin" / name


def onaccess_argv(mnt: Path, state: Path, *extra: str) -> list[str]:
    # ONACCESS_BIN lets the harness itself be exercised with a stand-in daemon.
    exe = Path(os.environ.get("ONACCESS_BIN") or venv_bin("onaccess"))
    if not exe.exists():
        raise BenchError(f"{exe} missing: run `bash setup.sh` first")
    return [str(exe), "run", "--watch", str(mnt), "--state-dir", str(state), *extra]


STATUS_KEYS = ("mode", "perm_events", "scans", "cache_hits", "background_scans", "joined_scans",
               "ignore_marks", "answered_empty", "inline_scans", "answered_inline", "close_write_left",
               "timeouts", "scan_errors", "denials", "queue_overflows", "latency", "error")


def status_brief(st: dict) -> str:
    return ", ".join(f"{k}={st[k]}" for k in STATUS_KEYS if k in st)


def onaccess_status(state: Path) -> dict:
    exe = os.environ.get("ONACCESS_BIN") or str(venv_bin("onaccess"))
    try:  # best effort: counters are a diagnosis, not a measurement
        cp = sh([exe, "status", "--json", "--state-dir", str(state)], timeout=180, check=False)
    except BenchError as exc:
        return {"error": str(exc)}
    if cp.returncode != 0:
        return {"error": (cp.stderr or cp.stdout).strip()[-300:]}
    try:
        return json.loads(cp.stdout)
    except json.JSONDecodeError:
        return {"error": cp.stdout.strip()[-300:]}


def machine_info() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    distro = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                distro = line.split("=", 1)[1].strip('"')
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "kernel": os.uname().release,
        "machine": f"{os.cpu_count()} vCPU {cpu}, {mem_kib // 1024 // 1024} GiB RAM, {distro}",
    }

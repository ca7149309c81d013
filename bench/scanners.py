"""The scanner configurations `bench/peers` compares, one class each.

Owns: installing each peer from Debian, writing its private configuration
(confined to the benchmark's xfs mount), starting it by hand, proving it
blocks its test file, and stopping it by PID. fapolicyd has no config-dir
option, so its /etc/fapolicyd is swapped for the run and restored after
(a backup left by a crashed run is restored on the next start).

Hands on: the list of live daemons (for CPU/RSS accounting) and the
probe result that shows the scanner really blocks something.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import time
from pathlib import Path

import lib
from lib import BenchError, Cleanup, Daemon, Workbench, log

APT = ["apt-get", "-o", "DPkg::Lock::Timeout=900", "install", "-y", "--no-install-recommends"]


def apt_install(packages: list[str], binaries: list[str]) -> None:
    if all(shutil.which(b) for b in binaries):
        return
    log(f"installing {' '.join(packages)} from Debian")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    lib.sh(APT + packages, timeout=1800, env=env)


def dpkg_version(pkg: str) -> str:
    cp = lib.sh(["dpkg-query", "-W", "-f", "${Version}", pkg], check=False)
    return cp.stdout.strip() if cp.returncode == 0 else "?"


class Scanner:
    name = "?"
    label = "?"

    def __init__(self, run: Path, bench: Workbench, cleanup: Cleanup) -> None:
        self.run, self.bench, self.cl = run, bench, cleanup
        self.daemons: list[Daemon] = []
        self.starts = 0

    def install(self) -> None: ...
    def version(self) -> str: return ""
    def start(self) -> None: ...
    def test_file(self) -> Path | None: return None
    def status(self) -> dict | None: return None

    def check_blocks(self) -> dict[str, int] | None:
        path = self.test_file()
        if path is None:
            return None
        alive = lambda: all(d.alive() for d in self.daemons)  # noqa: E731
        r = lib.wait_until_blocks(self.bench, path, timeout=120, alive=alive)
        lib.check_clean_allowed(self.bench)
        return r

    def stop(self) -> list[float]:
        times = [d.stop() for d in reversed(self.daemons)]
        self.daemons = []
        return times

    def cpu(self) -> float:
        return sum(lib.cpu_seconds(d.pid) for d in self.daemons if d.alive())

    def rss_kib(self) -> int:
        return sum(lib.peak_rss_kib(d.pid) for d in self.daemons if d.alive())


class Baseline(Scanner):
    name, label = "baseline", "no scanner"


class OnAccess(Scanner):
    name, label = "onaccess", "onaccess (fanotify-only)"

    def version(self) -> str:
        cp = lib.sh(["git", "-C", str(lib.REPO), "log", "-1", "--format=%h %cs"], check=False)
        return f"git {cp.stdout.strip()}"

    def start(self) -> None:
        self.starts += 1
        state = self.run / "state-onaccess"
        state.mkdir(exist_ok=True)
        d = lib.start_daemon(f"onaccess-{self.starts}", lib.onaccess_argv(self.bench.mnt, state, "--bpf", "off"),
                             self.run / "logs", self.cl)
        self.daemons.append(d)
        d.wait_for_output("ready", timeout=lib.READY_TIMEOUT)
        self.state = state

    def status(self) -> dict:
        return lib.onaccess_status(self.state)

    def test_file(self) -> Path:
        # Written while the daemon runs, so the daemon has to catch it itself.
        return lib.write_test_file(self.bench.mnt / "probe" / f"eicar-{self.starts}.com", lib.EICAR)


class ClamAV(Scanner):
    """clamd with a private socket and a tiny signature DB (freshclam cannot
    download here) + clamonacc in prevention mode on the mount only.
    OnAccessIncludePath, not OnAccessMountPath: the latter silently turns
    prevention off."""
    name, label = "clamav", "ClamAV clamonacc"
    TESTFILES = Path("/usr/share/clamav-testfiles")

    def install(self) -> None:
        apt_install(["clamav-daemon", "clamav", "clamav-testfiles"], ["clamd", "clamonacc", "clamscan"])
        self.dir = self.run / "clamav"
        db = self.dir / "db"
        db.mkdir(parents=True, exist_ok=True)
        (self.dir / "tmp").mkdir(exist_ok=True)
        (db / "bench.ndb").write_text(f"Bench.EICAR.Body:0:*:{lib.EICAR.hex()}\n")
        hdb = []
        for f in ("clam.exe",):
            data = (self.TESTFILES / f).read_bytes()
            hdb.append(f"{hashlib.md5(data).hexdigest()}:{len(data)}:Bench.{f}")
        (db / "bench.hdb").write_text("\n".join(hdb) + "\n")
        self.conf = self.dir / "clamd.conf"
        self.sock = self.dir / "clamd.sock"
        self.conf.write_text("\n".join([
            f"LocalSocket {self.sock}", "LocalSocketMode 660", "FixStaleSocket yes",
            "User clamav", "Foreground yes", f"DatabaseDirectory {db}",
            f"TemporaryDirectory {self.dir / 'tmp'}", f"LogFile {self.dir / 'clamd.log'}",
            "LogTime yes", f"PidFile {self.dir / 'clamd.pid'}",
            f"OnAccessIncludePath {self.bench.mnt}", "OnAccessPrevention yes",
            "OnAccessExcludeUname clamav", "",
        ]))
        lib.sh(["chown", "-R", "clamav:clamav", str(self.dir)])
        self._check_signatures(db)

    def _check_signatures(self, db: Path) -> None:
        samples = self.dir / "samples"
        samples.mkdir(exist_ok=True)
        lib.write_test_file(samples / "eicar.com", lib.EICAR, 0o644)
        for f in ("clam.exe", "clam.zip"):
            shutil.copyfile(self.TESTFILES / f, samples / f)
        cp = lib.sh(["clamscan", "--no-summary", "-d", str(db), str(samples)], check=False, timeout=300)
        found = [ln for ln in cp.stdout.splitlines() if ln.endswith("FOUND")]
        if len(found) != 3:
            raise BenchError(f"clamscan -d {db} should find EICAR, clam.exe, clam.zip:\n{cp.stdout}{cp.stderr}")
        log("clamscan with the bench DB: " + "; ".join(found))

    def version(self) -> str:
        return f"clamav {dpkg_version('clamav-daemon')}"

    def _ping(self) -> bool:
        with contextlib.suppress(OSError):
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(str(self.sock))
                s.sendall(b"zPING\0")
                return s.recv(16).startswith(b"PONG")
        return False

    def start(self) -> None:
        self.starts += 1
        clamd = lib.start_daemon(f"clamd-{self.starts}", ["clamd", "-c", str(self.conf)],
                                 self.run / "logs", self.cl)
        self.daemons.append(clamd)
        deadline = time.monotonic() + 120
        while not self._ping():
            if not clamd.alive() or time.monotonic() > deadline:
                raise BenchError(f"clamd did not answer PING\n{clamd.tail()}")
            time.sleep(0.2)
        onacc = lib.start_daemon(f"clamonacc-{self.starts}",
                                 ["clamonacc", "-F", "--fdpass", "-c", str(self.conf),
                                  "-l", str(self.dir / "clamonacc.log")], self.run / "logs", self.cl)
        self.daemons.append(onacc)

    def test_file(self) -> Path:
        return lib.write_test_file(self.bench.mnt / "probe" / f"eicar-clam-{self.starts}.com", lib.EICAR)


class Fapolicyd(Scanner):
    """fapolicyd enforcing, watch_fs = xfs (our mount is the only xfs), one
    deny rule and allow-all. uid=root: the stock uid=fapolicyd fails here
    ("Cannot change to uid", no CAP_SYS_RESOURCE)."""
    name, label = "fapolicyd", "fapolicyd"
    ETC = Path("/etc/fapolicyd")

    def install(self) -> None:
        apt_install(["fapolicyd"], ["fapolicyd"])
        self.backup = lib.DEFAULT_WORK_ROOT / "fapolicyd-etc.orig"
        restore_fapolicyd_etc(self.backup)  # from a run that died before restoring
        shutil.copytree(self.ETC, self.backup, symlinks=True)
        self.cl.push("restore /etc/fapolicyd", lambda: restore_fapolicyd_etc(self.backup))
        shutil.rmtree(self.ETC)
        (self.ETC / "rules.d").mkdir(parents=True)
        (self.ETC / "trust.d").mkdir()
        (self.ETC / "fapolicyd.conf").write_text("\n".join([
            "permissive = 0", "nice_val = 14", "q_size = 640", "uid = root", "gid = root",
            "do_stat_report = 1", "detailed_report = 1", "db_max_size = 50",
            "subj_cache_size = 1549", "obj_cache_size = 8191", "watch_fs = xfs", "trust = file",
            "integrity = none", "syslog_format = rule,dec,perm,auid,pid,exe,:,path,ftype,trust",
            "rpm_sha256_only = 0", "allow_filesystem_mark = 0", ""]))
        self.deny = self.bench.mnt / "deny" / "blocked-true"
        rules = f"deny perm=any all : path={self.deny}\nallow perm=any all : all\n"
        (self.ETC / "rules.d" / "10-bench.rules").write_text(rules)
        (self.ETC / "compiled.rules").write_text(rules)
        (self.ETC / "fapolicyd.trust").write_text("")
        Path("/run/fapolicyd").mkdir(exist_ok=True)
        Path("/var/lib/fapolicyd").mkdir(exist_ok=True)
        self.deny.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.bench.d.target, self.deny)
        self.deny.chmod(0o755)

    def version(self) -> str:
        return f"fapolicyd {dpkg_version('fapolicyd')}"

    def start(self) -> None:
        self.starts += 1
        # --debug-deny keeps it in the foreground (our PID) and logs denials only.
        self.daemons.append(lib.start_daemon(f"fapolicyd-{self.starts}", ["fapolicyd", "--debug-deny"],
                                             self.run / "logs", self.cl))

    def test_file(self) -> Path:
        return self.deny


def restore_fapolicyd_etc(backup: Path) -> None:
    if not backup.exists():
        return
    etc = Fapolicyd.ETC
    if etc.exists():
        shutil.rmtree(etc)
    shutil.copytree(backup, etc, symlinks=True)
    shutil.rmtree(backup)
    log("restored /etc/fapolicyd")


ALL = {"baseline": Baseline, "onaccess": OnAccess, "clamav": ClamAV, "fapolicyd": Fapolicyd}

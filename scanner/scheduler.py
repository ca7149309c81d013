"""The scan pool: worker processes, two lanes, one scan per inode in flight.

Owns: the worker processes (`scanner.scanworker`) and their sockets, the two job queues and the
in-flight table. A `ScanJob` owns its `fd` (a dup of a permission event's fd, or a CLOSE_WRITE
event's fd) until the daemon's completion handler closes it: the pool only lends it to a worker
(SCM_RIGHTS gives the worker a copy of its own) and never closes it. Hands on: each job's
outcome through `job.future`, resolved on the event-loop thread - everything here runs there.

Permission scans and background (CLOSE_WRITE) scans have workers of their own: permission
workers never take background work, and background workers run at nice 10, so an untar of
thousands of files cannot crowd out an opener waiting for its answer. A permission event that
joins a queued background job promotes it onto the permission queue; whichever worker takes it
first runs it; one a background worker already runs lends that worker nice 0 until it is done
(else a niced scan would make the opener wait behind every busy process on the machine).
Processes rather than threads: the event loop never waits for a GIL held by a
scan, and a crash inside libyara costs one worker (respawned), never the daemon.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import subprocess
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import structlog

from . import engine
from .scanworker import REQUEST
from .verdicts import Identity

log = structlog.get_logger()

PRIORITY_PERMISSION = 0
PRIORITY_BACKGROUND = 1
BACKGROUND_NICE = 10
BACKLOG_S = 0.05  # a background job queued longer than this is checked for deletion first
_LANES = {PRIORITY_PERMISSION: "permission", PRIORITY_BACKGROUND: "background"}


class Oversize(engine.ScanError):
    """The file is larger than max_file_size: not scanned."""


class Skipped(engine.ScanError):
    """A background scan not worth running: the file was deleted before its turn."""


class WorkerFailure(Exception):
    """The workers cannot start (their rules do not compile, or they die at once)."""


@dataclass(frozen=True)
class RulesSpec:
    """What a worker compiles, and the generation its results are recorded under."""

    paths: tuple[str, ...]
    engine: str
    generation: int


@dataclass(frozen=True)
class ScanOutcome:
    rules: tuple[str, ...]
    sha256: str | None
    generation: int  # of the rules that produced this outcome


@dataclass(eq=False)
class ScanJob:
    identity: Identity
    fd: int
    path: bytes | None
    kind: str  # exec | open | write
    pid: int
    future: asyncio.Future[ScanOutcome]
    priority: int = PRIORITY_BACKGROUND
    started: bool = False
    queued_at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False)
class _Worker:
    proc: subprocess.Popen[bytes]
    sock: socket.socket
    lane: int
    spec: RulesSpec
    ready: bool = False
    job: ScanJob | None = None
    retiring: bool = False
    boosted: bool = False  # a background worker lent nice 0 for a job someone waits for


class ScanPool:
    def __init__(self, loop: asyncio.AbstractEventLoop, spec: RulesSpec, workers: int, background_workers: int,
                 timeout: float, max_size: int) -> None:
        self._loop = loop
        self._spec = spec
        self._sizes = {PRIORITY_PERMISSION: workers, PRIORITY_BACKGROUND: background_workers}
        self._timeout = timeout
        self._max_size = max_size
        self._queues: dict[int, deque[ScanJob]] = {PRIORITY_PERMISSION: deque(), PRIORITY_BACKGROUND: deque()}
        self._workers: list[_Worker] = []
        self._ids = itertools.count(1)
        self._stopping = False
        self.fatal: str | None = None
        self.respawns = 0
        self.in_flight: dict[tuple[int, int], ScanJob] = {}
        # Replaced, never mutated: the reader thread reads it without a lock.
        self.pids: frozenset[int] = frozenset()
        for lane, size in self._sizes.items():
            for _ in range(size):
                self._spawn(lane)

    # --- workers --------------------------------------------------------------------------
    def _spawn(self, lane: int) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        spec = {"paths": list(self._spec.paths), "engine": self._spec.engine}
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "scanner.scanworker", str(child.fileno()), json.dumps(spec)],
                pass_fds=[child.fileno()], stdin=subprocess.DEVNULL, cwd="/",
            )
        finally:
            child.close()
        parent.setblocking(False)
        worker = _Worker(proc, parent, lane, self._spec)
        if lane == PRIORITY_BACKGROUND:
            _renice(worker, BACKGROUND_NICE)
        self._workers.append(worker)
        self.pids = self.pids | {proc.pid}
        self._loop.add_reader(parent.fileno(), self._on_answer, worker)

    async def wait_ready(self, timeout: float = 300.0) -> None:
        """Big rule sets take a while to compile (and everything is slow under emulation)."""
        end = self._loop.time() + timeout
        while True:
            # fatal first: a worker that reported it has exited, and an empty pool is not "ready"
            if self.fatal:
                raise WorkerFailure(self.fatal)
            current = [w for w in self._workers if not w.retiring]
            if current and all(w.ready for w in current):
                return
            if self._loop.time() > end:
                raise WorkerFailure(f"scan workers not ready after {timeout:.0f} s")
            await asyncio.sleep(0.02)

    def set_rules(self, spec: RulesSpec) -> None:
        """A new rule set: new workers compile it; old ones retire after their current job."""
        self._spec = spec
        for w in list(self._workers):
            w.retiring = True
            if w.job is None:
                self._close(w)
        for lane, size in self._sizes.items():
            for _ in range(size):
                self._spawn(lane)

    def _close(self, w: _Worker) -> None:
        if w in self._workers:
            self._workers.remove(w)
        self._loop.remove_reader(w.sock.fileno())
        w.sock.close()  # the worker sees EOF and exits
        self.pids = self.pids - {w.proc.pid}
        self._loop.call_later(5.0, self._reap, w.proc)

    @staticmethod
    def _reap(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    def _on_answer(self, w: _Worker) -> None:
        try:
            data = w.sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._gone(w)
            return
        msg = json.loads(data)
        if "ready" in msg:
            w.ready = True
        elif "fatal" in msg:
            self.fatal = msg["fatal"]
            log.error("scan_worker_failed", error=self.fatal)
        elif w.job is not None and msg.get("id") == w.job.extra.get("id"):
            job, w.job = w.job, None
            if w.boosted:
                w.boosted = False
                _renice(w, BACKGROUND_NICE)
            self._resolve(job, msg, w.spec.generation)
            if w.retiring:
                self._close(w)
        self._dispatch()

    def _gone(self, w: _Worker) -> None:
        """The worker died (crash, OOM kill): fail its job, start another in its place."""
        job = w.job
        w.job = None
        retiring = w.retiring
        self._close(w)
        if job is not None and not job.future.done():
            job.future.set_exception(engine.ScanError(f"scan worker {w.proc.pid} died"))
        if not retiring and not self._stopping and not self.fatal:
            self.respawns += 1
            log.warning("scan_worker_died", pid=w.proc.pid, respawns=self.respawns)
            self._spawn(w.lane)

    @staticmethod
    def _resolve(job: ScanJob, msg: dict[str, Any], generation: int) -> None:
        if job.future.done():
            return
        kind = msg.get("kind")
        if kind is None:
            job.future.set_result(ScanOutcome(tuple(msg["rules"]), msg.get("sha256"), generation))
        elif kind == "timeout":
            job.future.set_exception(engine.ScanTimeout(msg["error"]))
        elif kind == "oversize":
            job.future.set_exception(Oversize(msg["error"]))
        else:
            job.future.set_exception(engine.ScanError(msg["error"]))

    # --- jobs -----------------------------------------------------------------------------
    def find(self, identity: Identity) -> ScanJob | None:
        job = self.in_flight.get(identity.inode)
        return job if job is not None and job.identity == identity else None

    def submit(self, job: ScanJob) -> None:
        job.queued_at = self._loop.time()
        self.in_flight[job.identity.inode] = job
        job.future.add_done_callback(lambda _f: self._forget(job))
        self._queues[job.priority].append(job)
        self._dispatch()

    def promote(self, job: ScanJob) -> None:
        """A background job someone now waits for: a permission worker may take it too, or,
        if a background worker already runs it, that worker runs at nice 0 until it is done."""
        if job.priority == PRIORITY_PERMISSION:
            return
        job.priority = PRIORITY_PERMISSION
        if not job.started:
            self._queues[PRIORITY_PERMISSION].append(job)
            self._dispatch()
            return
        for w in self._workers:
            if w.job is job and w.lane == PRIORITY_BACKGROUND and not w.boosted:
                w.boosted = True
                _renice(w, 0)

    def _forget(self, job: ScanJob) -> None:
        if self.in_flight.get(job.identity.inode) is job:
            del self.in_flight[job.identity.inode]

    def _dispatch(self) -> None:
        for w in self._workers:
            if not w.ready or w.job is not None or w.retiring:
                continue
            queue = self._queues[w.lane]
            while queue:
                job = queue.popleft()
                if job.started or job.future.done():
                    continue
                if job.priority == PRIORITY_BACKGROUND and self._loop.time() - job.queued_at > BACKLOG_S \
                        and _deleted(job.fd):
                    # Nobody can open it by name any more; scanning it would only keep its
                    # space and its fd tied up behind an untar's backlog. (A job that did not
                    # wait is not asked: that fstat would cost more than it could save.)
                    job.future.set_exception(Skipped("deleted before its background scan"))
                    continue
                self._send(w, job)
                break

    def _send(self, w: _Worker, job: ScanJob) -> None:
        job.started = True
        job.extra["id"] = next(self._ids)
        w.job = job
        request = REQUEST.pack(job.extra["id"], self._timeout, self._max_size)
        try:
            socket.send_fds(w.sock, [request], [job.fd])
        except OSError:
            self._gone(w)  # fails the job; the daemon answers its waiters by policy

    def background_backlog(self) -> int:
        return len(self._queues[PRIORITY_BACKGROUND])

    def queued(self) -> int:
        return sum(1 for q in self._queues.values() for j in q if not j.started)

    def workers(self) -> dict[str, int]:
        return {_LANES[lane]: sum(1 for w in self._workers if w.lane == lane and w.ready) for lane in self._sizes}

    def stop(self) -> None:
        self._stopping = True
        workers = list(self._workers)
        for w in workers:
            self._close(w)
        for w in workers:  # EOF makes them exit; do not leave children behind
            try:
                w.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()


def _renice(w: _Worker, nice: int) -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, w.proc.pid, nice)
    except OSError as exc:  # no CAP_SYS_NICE to lower it again: the scan still finishes
        log.debug("renice_failed", pid=w.proc.pid, nice=nice, error=str(exc))


def _deleted(fd: int) -> bool:
    try:
        return os.fstat(fd).st_nlink == 0
    except OSError:
        return True

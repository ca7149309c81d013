"""The scan worker pool: bounded threads, two priorities, one job per inode in flight.

Owns: worker threads, the priority queue and the in-flight table. A `ScanJob` owns its `fd`
(a dup of a permission event's fd, or a CLOSE_WRITE event's fd) until the daemon's completion
handler closes it; the pool never closes fds. Hands on: the job's outcome through `job.future`,
resolved on the event loop thread, so every consumer runs there.

Permission scans and background CLOSE_WRITE scans have queues and threads of their own: the
permission workers never take background work, and background scans get `background_workers`
threads (default 1), so an untar of thousands of files cannot crowd out an opener waiting for
its answer. A permission event that joins a queued background job promotes it: the job goes on
the permission queue too, and whichever worker takes it first runs it. Scanning never happens
on the event loop: yara and boreal release the GIL, so threads scale with cores.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from .verdicts import Identity

PRIORITY_PERMISSION = 0
PRIORITY_BACKGROUND = 1


@dataclass(eq=False)
class ScanJob:
    identity: Identity
    fd: int
    path: bytes | None
    kind: str  # exec | open | write
    pid: int
    work: Callable[["ScanJob"], Any]
    future: asyncio.Future[Any]
    priority: int = PRIORITY_BACKGROUND
    started: bool = False
    waiters: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class ScanPool:
    def __init__(self, loop: asyncio.AbstractEventLoop, workers: int, background_workers: int = 1) -> None:
        self._loop = loop
        self._perm: queue.SimpleQueue[ScanJob | None] = queue.SimpleQueue()
        self._background: queue.SimpleQueue[ScanJob | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.in_flight: dict[tuple[int, int], ScanJob] = {}
        self._threads = [
            threading.Thread(target=self._run, args=(self._perm,), name=f"scan-{i}", daemon=True)
            for i in range(workers)
        ] + [
            threading.Thread(target=self._run, args=(self._background,), name=f"scan-bg-{i}", daemon=True)
            for i in range(background_workers)
        ]
        self._workers = {id(self._perm): workers, id(self._background): background_workers}
        for t in self._threads:
            t.start()

    def find(self, identity: Identity) -> ScanJob | None:
        job = self.in_flight.get(identity.inode)
        return job if job is not None and job.identity == identity else None

    def submit(self, job: ScanJob) -> None:
        self.in_flight[job.identity.inode] = job
        job.future.add_done_callback(lambda _f: self._forget(job))
        (self._perm if job.priority == PRIORITY_PERMISSION else self._background).put(job)

    def promote(self, job: ScanJob) -> None:
        """A background job someone now waits for: a permission worker may take it too."""
        if job.priority > PRIORITY_PERMISSION and not job.started:
            job.priority = PRIORITY_PERMISSION
            self._perm.put(job)

    def _forget(self, job: ScanJob) -> None:
        if self.in_flight.get(job.identity.inode) is job:
            del self.in_flight[job.identity.inode]

    def _run(self, source: "queue.SimpleQueue[ScanJob | None]") -> None:
        while True:
            job = source.get()
            if job is None:
                return
            with self._lock:
                if job.started:
                    continue
                job.started = True
            try:
                result: Any = job.work(job)
                error: BaseException | None = None
            except BaseException as exc:  # handed to the loop; a worker never dies
                result, error = None, exc
            try:
                self._loop.call_soon_threadsafe(self._finish, job, result, error)
            except RuntimeError:
                return  # loop closed: shutting down

    @staticmethod
    def _finish(job: ScanJob, result: Any, error: BaseException | None) -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    def queued(self) -> int:
        return self._perm.qsize() + self._background.qsize()

    def stop(self) -> None:
        for source in (self._perm, self._background):
            for _ in range(self._workers[id(source)]):
                source.put(None)

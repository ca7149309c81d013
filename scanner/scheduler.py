"""The scan worker pool: bounded threads, two priorities, one job per inode in flight.

Owns: worker threads, the priority queue and the in-flight table. A `ScanJob` owns its `fd`
(a dup of a permission event's fd, or a CLOSE_WRITE event's fd) until the daemon's completion
handler closes it; the pool never closes fds. Hands on: the job's outcome through `job.future`,
resolved on the event loop thread, so every consumer runs there.

Permission scans (priority 0) go before background CLOSE_WRITE scans (priority 1); a permission
event that joins a queued background job promotes it. Scanning never happens on the event loop:
yara and boreal release the GIL, so threads scale with cores.
"""

from __future__ import annotations

import asyncio
import itertools
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
    def __init__(self, loop: asyncio.AbstractEventLoop, workers: int) -> None:
        self._loop = loop
        self._queue: queue.PriorityQueue[tuple[int, int, ScanJob | None]] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self.in_flight: dict[tuple[int, int], ScanJob] = {}
        self._threads = [
            threading.Thread(target=self._run, name=f"scan-{i}", daemon=True) for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    def find(self, identity: Identity) -> ScanJob | None:
        job = self.in_flight.get(identity.inode)
        return job if job is not None and job.identity == identity else None

    def submit(self, job: ScanJob) -> None:
        self.in_flight[job.identity.inode] = job
        job.future.add_done_callback(lambda _f: self._forget(job))
        self._queue.put((job.priority, next(self._seq), job))

    def promote(self, job: ScanJob) -> None:
        """Queue a queued job again at permission priority; whichever entry a worker takes first runs."""
        if job.priority > PRIORITY_PERMISSION and not job.started:
            job.priority = PRIORITY_PERMISSION
            self._queue.put((PRIORITY_PERMISSION, next(self._seq), job))

    def _forget(self, job: ScanJob) -> None:
        if self.in_flight.get(job.identity.inode) is job:
            del self.in_flight[job.identity.inode]

    def _run(self) -> None:
        while True:
            _prio, _seq, job = self._queue.get()
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
        return self._queue.qsize()

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put((-1, next(self._seq), None))

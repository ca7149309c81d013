"""ScanPool: permission work never waits behind background work; promotion; in-flight lookup."""

from __future__ import annotations

import asyncio
import threading

from scanner.scheduler import PRIORITY_BACKGROUND, PRIORITY_PERMISSION, ScanJob, ScanPool
from scanner.verdicts import Identity


def _job(loop: asyncio.AbstractEventLoop, ino: int, work, priority: int) -> ScanJob:
    return ScanJob(Identity(1, ino, 0, 0, 0), -1, None, "open", 0, work, loop.create_future(), priority)


def test_permission_jobs_bypass_busy_background_and_promotion_works() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        pool = ScanPool(loop, workers=1, background_workers=1)
        release = threading.Event()
        ran_on: dict[int, str] = {}

        def blocking(job: ScanJob) -> str:
            release.wait(10)
            return "bg"

        def record(job: ScanJob) -> str:
            ran_on[job.identity.ino] = threading.current_thread().name
            return "done"

        busy = _job(loop, 1, blocking, PRIORITY_BACKGROUND)
        queued_bg = _job(loop, 2, record, PRIORITY_BACKGROUND)
        perm = _job(loop, 3, record, PRIORITY_PERMISSION)
        pool.submit(busy)
        pool.submit(queued_bg)
        pool.submit(perm)
        assert await asyncio.wait_for(perm.future, 5) == "done"
        assert not queued_bg.future.done()  # stuck behind the busy background worker
        assert pool.find(queued_bg.identity) is queued_bg
        assert pool.find(Identity(1, 2, 1, 0, 0)) is None  # same inode, other identity
        pool.promote(queued_bg)
        assert await asyncio.wait_for(queued_bg.future, 5) == "done"
        assert ran_on[2].startswith("scan-") and not ran_on[2].startswith("scan-bg")
        release.set()
        assert await asyncio.wait_for(busy.future, 5) == "bg"
        await asyncio.sleep(0)
        assert pool.in_flight == {}
        pool.stop()

    asyncio.run(scenario())


def test_worker_exceptions_reach_the_future() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        pool = ScanPool(loop, workers=1)

        def boom(job: ScanJob) -> None:
            raise ValueError("scan exploded")

        job = _job(loop, 9, boom, PRIORITY_PERMISSION)
        pool.submit(job)
        try:
            await asyncio.wait_for(job.future, 5)
        except ValueError as exc:
            assert "exploded" in str(exc)
        else:
            raise AssertionError("no exception")
        pool.stop()

    asyncio.run(scenario())

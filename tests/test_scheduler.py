"""ScanPool: worker processes, lanes, promotion, crash recovery, rule swaps."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from oatest import EICAR
from scanner import engine
from scanner.paths import bundled_rules_dir
from scanner.scheduler import (PRIORITY_BACKGROUND, PRIORITY_PERMISSION, RulesSpec, ScanJob, ScanPool,
                               WorkerFailure)
from scanner.verdicts import Identity

SLOW = "rule slow { condition: for any i in (0..filesize-1) : (for any j in (0..filesize-1) : (uint8(i) == 0xFF and uint8(j) == 0xFE)) }"


def _job(loop: asyncio.AbstractEventLoop, path: Path, priority: int) -> ScanJob:
    fd = os.open(path, os.O_RDONLY)
    st = os.fstat(fd)
    return ScanJob(Identity(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns), fd, None, "open",
                   0, loop.create_future(), priority)


def _rules(tmp_path: Path) -> RulesSpec:
    (tmp_path / "slow.yar").write_text(SLOW)
    return RulesSpec((str(tmp_path / "slow.yar"), str(bundled_rules_dir() / "eicar.yar")), "yara", 1)


def test_lanes_promotion_and_crash_recovery(tmp_path: Path) -> None:
    slow_file = tmp_path / "slow.bin"
    slow_file.write_bytes(b"\0" * 8000)
    bad = tmp_path / "bad"
    bad.write_bytes(EICAR)
    queued = tmp_path / "queued"
    queued.write_bytes(b"plain")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        pool = ScanPool(loop, _rules(tmp_path), workers=1, background_workers=1, timeout=60, max_size=1 << 20)
        await pool.wait_ready()
        jobs = []
        try:
            busy = _job(loop, slow_file, PRIORITY_BACKGROUND)
            waiting_bg = _job(loop, queued, PRIORITY_BACKGROUND)
            perm = _job(loop, bad, PRIORITY_PERMISSION)
            jobs = [busy, waiting_bg, perm]
            for j in jobs:
                pool.submit(j)
            outcome = await asyncio.wait_for(perm.future, 20)
            assert any("EICAR" in r for r in outcome.rules) and outcome.generation == 1
            assert not busy.future.done() and not waiting_bg.future.done()
            pool.promote(waiting_bg)
            assert (await asyncio.wait_for(waiting_bg.future, 20)).rules == ()
            # Someone now waits for the running background scan: its worker leaves nice 10.
            bg_pid = next(w.proc.pid for w in pool._workers if w.job is busy)
            assert os.getpriority(os.PRIO_PROCESS, bg_pid) == 10
            pool.promote(busy)
            assert os.getpriority(os.PRIO_PROCESS, bg_pid) == 0
            # Kill the background worker in the middle of its slow scan: the job fails, a new
            # worker takes its place.
            os.kill(bg_pid, signal.SIGKILL)
            with pytest.raises(engine.ScanError, match="died"):
                await asyncio.wait_for(busy.future, 20)
            assert pool.respawns == 1 and bg_pid not in pool.pids
            await pool.wait_ready()
            assert pool.workers() == {"permission": 1, "background": 1}
            # A boosted worker goes back to nice 10 once the job it was lent for is done.
            medium = tmp_path / "medium.bin"
            medium.write_bytes(b"\0" * 1500)
            lent = _job(loop, medium, PRIORITY_BACKGROUND)
            jobs.append(lent)
            pool.submit(lent)
            assert lent.started
            bg_pid = next(w.proc.pid for w in pool._workers if w.job is lent)
            pool.promote(lent)
            assert os.getpriority(os.PRIO_PROCESS, bg_pid) == 0
            assert (await asyncio.wait_for(lent.future, 60)).rules == ()
            assert os.getpriority(os.PRIO_PROCESS, bg_pid) == 10
            # New rules: later results carry the new generation.
            pool.set_rules(RulesSpec((str(bundled_rules_dir() / "eicar.yar"),), "boreal", 2))
            await pool.wait_ready()
            again = _job(loop, bad, PRIORITY_PERMISSION)
            jobs.append(again)
            pool.submit(again)
            assert (await asyncio.wait_for(again.future, 20)).generation == 2
            assert pool.in_flight == {}
        finally:
            pool.stop()
            for j in jobs:
                os.close(j.fd)
        assert pool.pids == set()

    asyncio.run(scenario())


def test_workers_report_broken_rules(tmp_path: Path) -> None:
    (tmp_path / "x.yar").write_text("rule x { condition: nope }")

    async def scenario() -> None:
        pool = ScanPool(asyncio.get_running_loop(), RulesSpec((str(tmp_path / "x.yar"),), "yara", 1),
                        workers=1, background_workers=1, timeout=5, max_size=100)
        try:
            with pytest.raises(WorkerFailure, match="x.yar"):
                await pool.wait_ready(timeout=30)
        finally:
            pool.stop()

    asyncio.run(scenario())


def test_oversize_and_timeout_are_reported(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"\0" * 40_000)  # the slow rule's loops run to the end: far past 1 s

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        for max_size, error, match in ((100, engine.ScanError, "max_file_size"),
                                       (1 << 20, engine.ScanTimeout, None)):
            pool = ScanPool(loop, _rules(tmp_path), workers=1, background_workers=1, timeout=1,
                            max_size=max_size)
            await pool.wait_ready()
            job = _job(loop, big, PRIORITY_PERMISSION)
            try:
                pool.submit(job)
                with pytest.raises(error, match=match):
                    await asyncio.wait_for(job.future, 30)
            finally:
                pool.stop()
                os.close(job.fd)

    asyncio.run(scenario())

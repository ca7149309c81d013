"""The verdict DB under concurrent first opens, and a lock that outlasts the wait."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from pathlib import Path

import pytest

from scanner import store as store_mod
from scanner.store import Store, StoreError


def _open(path: str, barrier, results) -> None:
    barrier.wait()
    try:
        Store(Path(path)).close()
        results.put(None)
    except Exception as exc:  # reported to the parent, which asserts on it
        results.put(repr(exc))


def test_many_processes_create_the_db_at_once(tmp_path: Path) -> None:
    """Daemon, CLI and quarantine threads may all be first: none may see "database is locked"."""
    ctx = mp.get_context("fork")
    for trial in range(8):
        path = tmp_path / f"v{trial}.db"
        barrier, results = ctx.Barrier(8), ctx.Queue()
        procs = [ctx.Process(target=_open, args=(str(path), barrier, results)) for _ in range(8)]
        for p in procs:
            p.start()
        errors = [r for r in (results.get(timeout=60) for _ in procs) if r]
        for p in procs:
            p.join(10)
        assert errors == []
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] >= 1
        conn.close()


def test_a_lock_held_too_long_is_reported_as_a_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "v.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE x (y)")
    holder.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr(store_mod, "LOCK_WAIT_S", 0.3)
    try:
        with pytest.raises(StoreError, match="stayed locked by another process") as info:
            Store(path)
        assert "move it aside" not in str(info.value)  # nothing is wrong with the file
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    Store(path).close()  # and once the lock is gone, it opens

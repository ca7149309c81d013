"""The SQLite verdict DB: schema migrations and every query on verdicts, allow-list, events, meta.

Owns: the database file under the state dir and its schema (`db/NNN_*.sql`, applied in order,
tracked by `PRAGMA user_version`). Hands on: `Verdict`s, allow-list answers and event rows as
plain values. Callers never write SQL; the quarantine module uses `table("quarantine")`, the
sqlite-utils face of its own table.

One `Store` per thread: the daemon keeps all DB work on its event-loop thread.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import sqlite_utils

from .paths import schema_dir
from .verdicts import Decision, Identity, Verdict


class StoreError(Exception):
    """The DB cannot be used (unreadable, corrupt, newer schema); the message says what to do."""


@dataclass(frozen=True, slots=True)
class EventRow:
    id: int
    at: float
    kind: str
    verdict: str
    action: str
    path: bytes | None
    pid: int | None
    uid: int | None
    exe: str | None
    rules: tuple[str, ...]
    detail: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "kind": self.kind,
            "verdict": self.verdict,
            "action": self.action,
            "path": os.fsdecode(self.path) if self.path is not None else None,
            "pid": self.pid,
            "uid": self.uid,
            "exe": self.exe,
            "rules": list(self.rules),
            "detail": self.detail,
        }


def _migrations() -> list[tuple[int, Path]]:
    found = []
    for path in sorted(schema_dir().glob("*.sql")):
        m = re.match(r"(\d+)_", path.name)
        if m:
            found.append((int(m.group(1)), path))
    return found


class Store:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
            conn.execute("PRAGMA busy_timeout = 5000")
            _switch_to_wal(conn)
            # NORMAL: a power cut may lose the last verdicts (they are rescanned), never corrupt.
            conn.execute("PRAGMA synchronous = NORMAL")
            # No temp files: they would land in /var/tmp, a watched filesystem (see reader.py).
            conn.execute("PRAGMA temp_store = MEMORY")
            self._conn = conn
            self.db = sqlite_utils.Database(conn)
            self._migrate()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and _is_locked(exc):
                raise StoreError(f"verdict DB {self.path} stayed locked by another process for "
                                 f"{LOCK_WAIT_S:.0f} s (nothing is wrong with it: try again)") from exc
            raise StoreError(
                f"verdict DB {self.path} is unusable ({exc}); move it aside to start with an empty one"
            ) from exc
        except OSError as exc:
            raise StoreError(f"cannot open verdict DB {self.path}: {exc.strerror or exc}") from exc

    def _migrate(self) -> None:
        conn = self._conn
        if conn.execute("PRAGMA integrity_check(1)").fetchone()[0] != "ok":
            raise sqlite3.DatabaseError("integrity check failed")
        current = conn.execute("PRAGMA user_version").fetchone()[0]
        migrations = _migrations()
        latest = migrations[-1][0] if migrations else 0
        if current > latest:
            raise StoreError(f"verdict DB {self.path} has schema {current}, newer than this onaccess ({latest})")
        for version, sql_file in migrations:
            if version <= current:
                continue
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Another process (a CLI, the daemon) may have migrated while we waited for the lock.
                if conn.execute("PRAGMA user_version").fetchone()[0] >= version:
                    conn.execute("COMMIT")
                    continue
                for statement in _split_sql(sql_file.read_text()):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self._conn.close()

    def table(self, name: str) -> sqlite_utils.db.Table:
        return self.db[name]  # type: ignore[return-value]

    # --- meta -----------------------------------------------------------------------------
    def meta_get(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def meta_set(self, key: str, value: str) -> None:
        self._conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def rules_generation(self, digest: str) -> int:
        """The generation for this rule set: bumped whenever the compiled rules' digest changes."""
        generation = int(self.meta_get("rules_generation") or "0")
        if self.meta_get("rules_digest") != digest:
            generation += 1
            self.meta_set("rules_generation", str(generation))
            self.meta_set("rules_digest", digest)
        return generation

    # --- verdicts -------------------------------------------------------------------------
    def lookup(self, identity: Identity, generation: int) -> Verdict | None:
        row = self._conn.execute(
            "SELECT size, mtime_ns, ctime_ns, verdict, generation, rules FROM verdicts WHERE dev = ? AND ino = ?",
            (identity.dev, identity.ino),
        ).fetchone()
        if row is None:
            return None
        stored = Verdict(
            Identity(identity.dev, identity.ino, row[0], row[1], row[2]),
            Decision(row[3]),
            row[4],
            tuple(json.loads(row[5])),
        )
        return stored if stored.holds_for(identity, generation) else None

    def record(self, verdict: Verdict, path: bytes | None, sha256: str | None = None) -> None:
        self.record_many([(verdict, path, sha256)])

    def record_many(self, items: list[tuple[Verdict, bytes | None, str | None]]) -> None:
        """One transaction for a burst of verdicts: a commit per file would dominate a cold pass."""
        now = time.time()
        rows = [
            (v.identity.dev, v.identity.ino, v.identity.size, v.identity.mtime_ns, v.identity.ctime_ns,
             v.decision.value, v.generation, json.dumps(list(v.rules)), path, sha256, now)
            for v, path, sha256 in items
        ]
        with self._conn:  # BEGIN ... COMMIT (ROLLBACK on error)
            self._conn.executemany(
                "INSERT OR REPLACE INTO verdicts (dev, ino, size, mtime_ns, ctime_ns, verdict, generation, rules,"
                " path, sha256, scanned_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def forget(self, dev: int, ino: int) -> None:
        self._conn.execute("DELETE FROM verdicts WHERE dev = ? AND ino = ?", (dev, ino))

    def verdict_row(self, dev: int, ino: int) -> dict[str, Any] | None:
        cur = self._conn.execute("SELECT * FROM verdicts WHERE dev = ? AND ino = ?", (dev, ino))
        row = cur.fetchone()
        if row is None:
            return None
        return dict(zip([d[0] for d in cur.description], row))

    def dangerous(self) -> Iterator[tuple[Verdict, bytes | None]]:
        cur = self._conn.execute(
            "SELECT dev, ino, size, mtime_ns, ctime_ns, generation, rules, path FROM verdicts WHERE verdict = 'dangerous'"
        )
        for dev, ino, size, mtime, ctime, gen, rules, path in cur.fetchall():
            yield Verdict(Identity(dev, ino, size, mtime, ctime), Decision.DANGEROUS, gen, tuple(json.loads(rules))), path

    def path_of(self, dev: int, ino: int) -> bytes | None:
        row = self._conn.execute("SELECT path FROM verdicts WHERE dev = ? AND ino = ?", (dev, ino)).fetchone()
        return row[0] if row else None

    # --- allow-list -----------------------------------------------------------------------
    def allow_add(self, sha256: str, reason: str | None = None, path: bytes | None = None) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO allowlist (sha256, reason, path, added_at) VALUES (?, ?, ?, ?)",
            (sha256.lower(), reason, path, time.time()),
        )

    def allow_remove(self, sha256: str) -> bool:
        return self._conn.execute("DELETE FROM allowlist WHERE sha256 = ?", (sha256.lower(),)).rowcount > 0

    def allowed(self, sha256: str) -> bool:
        return self._conn.execute("SELECT 1 FROM allowlist WHERE sha256 = ?", (sha256.lower(),)).fetchone() is not None

    def allowlist_version(self) -> int:
        """Changes whenever another connection (the CLI) commits: cheap enough for every scan."""
        return self._conn.execute("PRAGMA data_version").fetchone()[0]

    def allow_count(self) -> int:
        return self._conn.execute("SELECT count(*) FROM allowlist").fetchone()[0]

    def allow_list(self) -> list[dict[str, Any]]:
        rows = self._conn.execute("SELECT sha256, reason, path, added_at FROM allowlist ORDER BY added_at").fetchall()
        return [
            {"sha256": s, "reason": r, "path": os.fsdecode(p) if p is not None else None, "added_at": a}
            for s, r, p, a in rows
        ]

    # --- events ---------------------------------------------------------------------------
    def add_event(self, kind: str, verdict: str, action: str, path: bytes | None = None, pid: int | None = None,
                  uid: int | None = None, exe: str | None = None, rules: tuple[str, ...] = (),
                  detail: str | None = None, at: float | None = None) -> int:
        cur = self._conn.execute(
            "INSERT INTO events (at, kind, verdict, action, path, pid, uid, exe, rules, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (at if at is not None else time.time(), kind, verdict, action, path, pid, uid, exe,
             json.dumps(list(rules)), detail),
        )
        return int(cur.lastrowid or 0)

    def events(self, since: float | None = None, verdict: str | None = None, limit: int = 100) -> list[EventRow]:
        sql = "SELECT id, at, kind, verdict, action, path, pid, uid, exe, rules, detail FROM events WHERE 1=1"
        args: list[Any] = []
        if since is not None:
            sql += " AND at >= ?"
            args.append(since)
        if verdict is not None:
            sql += " AND verdict = ?"
            args.append(verdict)
        sql += " ORDER BY at DESC, id DESC LIMIT ?"
        args.append(limit)
        return [
            EventRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], tuple(json.loads(r[9])), r[10])
            for r in self._conn.execute(sql, args).fetchall()
        ]


LOCK_WAIT_S = 5.0


def _is_locked(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def _switch_to_wal(conn: sqlite3.Connection) -> None:
    """`PRAGMA journal_mode = WAL` on a DB that several processes open at once for the first
    time (daemon start, CLI, quarantine threads): the switch fails with "database is locked"
    at once instead of waiting out busy_timeout, so wait here."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if not _is_locked(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _split_sql(text: str) -> list[str]:
    """Statements of a migration file; sqlite3.complete_statement finds the boundaries."""
    statements, buf = [], ""
    for line in text.splitlines(keepends=True):
        if not buf and line.strip().startswith("--"):
            continue
        buf += line
        if sqlite3.complete_statement(buf):
            statements.append(buf.strip())
            buf = ""
    if buf.strip():
        statements.append(buf.strip())
    return statements

"""Threat-management commands: `quarantine`, `allow` and `events`.

Owns argument parsing and output for these commands only; the work is done by `Quarantine` and
`Store`, directly on the DB and quarantine dir under the state dir (the daemon need not run).
`scanner/cli.py` calls `register(sub, [common_options()])`; every handler returns an exit code
and raises `CliError` for the user's mistakes.
"""

from __future__ import annotations

import argparse
import os
import re
import stat
import time
from datetime import datetime
from typing import Any, Callable, Sequence

import structlog

from . import log as log_mod
from .cliutil import EXIT_OK, CliError, emit, load_config
from .config import Config
from .digest import sha256_fd
from .quarantine import Quarantine, QuarantineError, QuarantineRecord
from .store import Store, StoreError

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    q = sub.add_parser("quarantine", help="list, inspect, restore or delete quarantined files")
    qsub = q.add_subparsers(dest="quarantine_command", metavar="COMMAND", required=True)
    p = qsub.add_parser("list", parents=parents, help="quarantined files, newest first")
    p.set_defaults(func=cmd_quarantine_list)
    p = qsub.add_parser("show", parents=parents, help="everything recorded about one quarantined file")
    p.add_argument("id")
    p.set_defaults(func=cmd_quarantine_show)
    p = qsub.add_parser("restore", parents=parents,
                        help="put a file back (content, owner, mode, times) and allow-list its sha256")
    p.add_argument("id")
    p.add_argument("--to", type=os.fsencode, metavar="PATH",
                   help="absolute path (file, or existing directory) to restore to instead of the original")
    p.add_argument("--force", action="store_true", help="overwrite an existing file at the target")
    p.set_defaults(func=cmd_quarantine_restore)
    p = qsub.add_parser("delete", parents=parents, help="delete a quarantined file for good")
    p.add_argument("id")
    p.set_defaults(func=cmd_quarantine_delete)
    p = qsub.add_parser("purge", parents=parents, help="delete quarantined files older than DAYS")
    p.add_argument("--older-than", type=_days, required=True, metavar="DAYS")
    p.set_defaults(func=cmd_quarantine_purge)

    a = sub.add_parser("allow", help="the allow-list: sha256 hashes that are SAFE without a scan")
    asub = a.add_subparsers(dest="allow_command", metavar="COMMAND", required=True)
    p = asub.add_parser("add", parents=parents, help="allow a file (by content) or a sha256")
    p.add_argument("path", nargs="?", type=os.fsencode, metavar="PATH")
    p.add_argument("--sha256", metavar="HASH")
    p.add_argument("--reason", metavar="TEXT")
    p.set_defaults(func=cmd_allow_add)
    p = asub.add_parser("list", parents=parents, help="allow-listed hashes")
    p.set_defaults(func=cmd_allow_list)
    p = asub.add_parser("remove", parents=parents, help="remove a hash from the allow-list")
    p.add_argument("sha256", metavar="HASH")
    p.set_defaults(func=cmd_allow_remove)

    p = sub.add_parser("events", parents=parents, help="history of detections and blocks, newest first")
    p.add_argument("--since", type=parse_since, metavar="TIME",
                   help="ISO 8601 time (local if no zone) or an age such as 30m, 1h, 2d, 1w")
    p.add_argument("--verdict", choices=("safe", "dangerous"))
    p.add_argument("--limit", type=_positive_int, default=100, metavar="N")
    p.set_defaults(func=cmd_events)


# --- argument types ---------------------------------------------------------------------------
def parse_since(text: str, now: float | None = None) -> float:
    """A point in time as a UNIX timestamp: `1h`/`2d`-style ages or ISO 8601."""
    m = _RELATIVE.match(text)
    if m:
        return (now if now is not None else time.time()) - float(m.group(1)) * _UNIT[m.group(2)]
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an age (30m, 1h, 2d, 1w) nor an ISO 8601 time (2026-11-22T18:00)"
        ) from None


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError("must be zero or more days")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive whole number")
    return value


# --- helpers ----------------------------------------------------------------------------------
def _logs_to_stderr() -> None:
    """structlog's defaults print to stdout, which would corrupt --json output."""
    if not structlog.is_configured():
        log_mod.setup("warning")


def _quarantine(cfg: Config) -> Quarantine:
    _logs_to_stderr()
    return Quarantine(cfg.db_path, cfg.quarantine_dir)


def _store(cfg: Config) -> Store:
    _logs_to_stderr()
    try:
        return Store(cfg.db_path)
    except StoreError as exc:
        raise CliError(str(exc)) from exc


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).isoformat(timespec="seconds") if ts is not None else "-"


def _human_path(path: bytes | str | None) -> str:
    if path is None:
        return "-"
    raw = os.fsencode(path) if isinstance(path, str) else path
    # Printable whatever the bytes: non-UTF-8 shows as \xNN instead of crashing print().
    return raw.decode("utf-8", "backslashreplace")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    for row in [list(headers), *rows]:
        # The last column is left unpadded: it is usually a path of any length.
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths)] + [row[-1]]
        print("  ".join(cells).rstrip())


def _run(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except QuarantineError as exc:
        raise CliError(str(exc)) from exc
    except StoreError as exc:
        raise CliError(str(exc)) from exc


# --- quarantine -------------------------------------------------------------------------------
def cmd_quarantine_list(args: argparse.Namespace) -> int:
    records: list[QuarantineRecord] = _run(lambda: _quarantine(load_config(args)).list())

    def human() -> None:
        if not records:
            print("no quarantined files")
            return
        print_table(
            ["ID", "QUARANTINED", "STATE", "SIZE", "RULES", "ORIGINAL PATH"],
            [[r.id, _when(r.quarantined_at or r.detected_at), r.state, str(r.size if r.size is not None else "-"),
              ",".join(r.rules) or "-", _human_path(r.original_path)] for r in records],
        )

    emit(args, [r.as_json() for r in records], human)
    return EXIT_OK


def cmd_quarantine_show(args: argparse.Namespace) -> int:
    record: QuarantineRecord = _run(lambda: _quarantine(load_config(args)).show(args.id))
    data = record.as_json()

    def human() -> None:
        rows = [
            ["id", record.id], ["state", record.state], ["original path", _human_path(record.original_path)],
            ["sha256", record.sha256 or "-"], ["size", str(record.size)],
            ["owner", f"{record.uid}:{record.gid}"],
            ["mode", stat.filemode(record.mode) + f" ({stat.S_IMODE(record.mode):04o})" if record.mode else "-"],
            ["mtime", _when(record.mtime_ns / 1e9) if record.mtime_ns is not None else "-"],
            ["xattrs", ", ".join(sorted(record.xattrs)) or "-"], ["rules", ", ".join(record.rules) or "-"],
            ["event", record.event or "-"], ["detected", _when(record.detected_at)],
            ["quarantined", _when(record.quarantined_at)],
        ]
        if record.detail:
            rows.append(["note", record.detail])
        width = max(len(k) for k, _ in rows)
        for key, value in rows:
            print(f"{key.ljust(width)}  {value}")

    emit(args, data, human)
    return EXIT_OK


def cmd_quarantine_restore(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    restored: bytes = _run(lambda: _quarantine(cfg).restore(args.id, to=args.to, force=args.force))
    emit(args, {"id": args.id, "restored_to": os.fsdecode(restored), "allow_listed": True},
         f"restored {args.id} to {_human_path(restored)} (its sha256 is now allow-listed)")
    return EXIT_OK


def cmd_quarantine_delete(args: argparse.Namespace) -> int:
    _run(lambda: _quarantine(load_config(args)).delete(args.id))
    emit(args, {"id": args.id, "deleted": True}, f"deleted {args.id}")
    return EXIT_OK


def cmd_quarantine_purge(args: argparse.Namespace) -> int:
    count: int = _run(lambda: _quarantine(load_config(args)).purge(args.older_than))
    emit(args, {"purged": count, "older_than_days": args.older_than},
         f"purged {count} quarantined file{'s' if count != 1 else ''} older than {args.older_than:g} days")
    return EXIT_OK


# --- allow-list -------------------------------------------------------------------------------
def _hash_file(path: bytes) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise CliError(f"cannot open {_human_path(path)}: {exc.strerror}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CliError(f"{_human_path(path)} is not a regular file")
        return sha256_fd(fd)
    finally:
        os.close(fd)


def cmd_allow_add(args: argparse.Namespace) -> int:
    if (args.path is None) == (args.sha256 is None):
        raise CliError("give either a PATH or --sha256 HASH (not both)")
    path = None
    if args.sha256 is not None:
        if not _SHA256.match(args.sha256):
            raise CliError(f"{args.sha256!r} is not a sha256 (64 hex digits)")
        digest = args.sha256.lower()
    else:
        path = os.path.abspath(args.path)
        digest = _hash_file(path)
    store = _store(load_config(args))
    try:
        store.allow_add(digest, reason=args.reason or "added by admin", path=path)
    finally:
        store.close()
    emit(args, {"sha256": digest, "path": os.fsdecode(path) if path else None, "reason": args.reason},
         f"allowed {digest}" + (f" ({_human_path(path)})" if path else ""))
    return EXIT_OK


def cmd_allow_list(args: argparse.Namespace) -> int:
    store = _store(load_config(args))
    try:
        entries = store.allow_list()
    finally:
        store.close()

    def human() -> None:
        if not entries:
            print("the allow-list is empty")
            return
        print_table(["SHA256", "ADDED", "REASON", "PATH"],
                    [[e["sha256"], _when(e["added_at"]), e["reason"] or "-", _human_path(e["path"])]
                     for e in entries])

    emit(args, entries, human)
    return EXIT_OK


def cmd_allow_remove(args: argparse.Namespace) -> int:
    if not _SHA256.match(args.sha256):
        raise CliError(f"{args.sha256!r} is not a sha256 (64 hex digits)")
    store = _store(load_config(args))
    try:
        removed = store.allow_remove(args.sha256)
    finally:
        store.close()
    if not removed:
        raise CliError(f"{args.sha256.lower()} is not in the allow-list")
    emit(args, {"sha256": args.sha256.lower(), "removed": True}, f"removed {args.sha256.lower()}")
    return EXIT_OK


# --- events -----------------------------------------------------------------------------------
def cmd_events(args: argparse.Namespace) -> int:
    store = _store(load_config(args))
    try:
        rows = store.events(since=args.since, verdict=args.verdict, limit=args.limit)
    finally:
        store.close()

    def human() -> None:
        if not rows:
            print("no events")
            return
        print_table(["TIME", "KIND", "VERDICT", "ACTION", "PID", "RULES", "PATH"],
                    [[_when(e.at), e.kind, e.verdict, e.action, str(e.pid) if e.pid is not None else "-",
                      ",".join(e.rules) or "-", _human_path(e.path)] for e in rows])

    emit(args, [e.as_json() for e in rows], human)
    return EXIT_OK

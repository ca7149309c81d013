"""Crash-safe quarantine: move a detected file into neutralised storage, and restore it.

Owns: the quarantine directory (`<state_dir>/quarantine`, 0700) and the `quarantine` table,
whose `state` column is the journal of every move. Hands on: `QuarantineRecord`s to the CLI,
and allow-list entries (via `Store.allow_add`) for restored files.

Storage format (version 1). File name = quarantine id, mode 0400, owner root. Content:
`MAGIC` (8 bytes, starts with 0x7f and holds NUL bytes) + a 32-byte random key + the original
bytes XORed with that key repeated. So a stored file is never the original in place: the
kernel cannot exec it (no x bit, and ENOEXEC on the magic even if chmodded), a shell refuses
it as binary, and no scanner or YARA rule - not even one with the `xor` modifier, which tries
single-byte keys only - matches it. The key travels in the file, so a stored file can be
decoded without the DB.

Moves. Same-filesystem rename is not used: neutralising means rewriting the content anyway, and
a rename would briefly leave a runnable plaintext copy and move whatever the name refers to at
that instant. Every quarantine (same or other filesystem) is: journal row `pending` -> copy FROM
THE EVENT FD (never reopened by path) into `<id>.part`, fsync, drop the page cache and re-read
to verify size + sha256 -> rename to `<id>`, fsync the directory -> journal `copied` -> check the
directory entry still names the same inode (fstatat on a dirfd) -> unlinkat, fsync -> journal
`done`. `recover()` (daemon start) rolls `pending` back (original untouched) and finishes
`copied` (unlink only if the name still holds the copied content). Restores and deletes are
journalled the same way (`restoring`, `deleting`). A restore allow-lists the sha256 before the
file appears (so the daemon's scan of the new file finds it SAFE), writes a temp file in the
target dir (O_EXCL|O_NOFOLLOW), fsyncs, then link(2)s it into place (rename(2) with --force).
Any failure - a full disk included - leaves the original in place and the journal clean; the
error is a `QuarantineError`.

Path safety. Directories are opened component by component from `/` with O_NOFOLLOW, so no
symlink anywhere in a path is followed (a path through a symlinked directory is refused, or,
for quarantine, replaced by the kernel's own name of the fd from /proc/self/fd). Residual risk:
between the fstatat check and unlinkat, a user with write access to that directory can swap
the entry; we then unlink that user's replacement and the detected inode survives under its new
name - still DANGEROUS in the verdict DB. This is detected (link count of the fd did not drop),
logged as `quarantine_race` and recorded in the row's detail.

Threads: the daemon calls this off its event loop. Each thread gets its own `Store` (sqlite
connections are per thread); `synchronous = FULL` on it, because the journal must survive a
power cut, not just a crash.

Test hook: ONACCESS_QUARANTINE_CRASH_AT=<point> SIGKILLs the process at that point (see
`CRASH_POINTS`), so tests can prove recovery.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import json
import os
import secrets
import signal
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import structlog

from .digest import sha256_fd
from .store import Store, StoreError

log = structlog.get_logger()

MAGIC = b"\x7fOAQ\x00\x01\x00\x00"  # 0x7f + "OAQ" + NUL + format version 1
KEY_LEN = 32
HEADER_LEN = len(MAGIC) + KEY_LEN
CHUNK = 1 << 20  # multiple of KEY_LEN, so every chunk but the last starts key-aligned
CRASH_ENV = "ONACCESS_QUARANTINE_CRASH_AT"
CRASH_POINTS = ("after-journal", "after-copy", "after-unlink",
                "restore-after-tmp", "restore-after-link", "delete-after-unlink")

_DIR = os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NO_SPACE = {28, 122}  # ENOSPC, EDQUOT


class QuarantineError(Exception):
    """A quarantine operation could not be done; nothing was lost and the message says why."""


@dataclass(frozen=True)
class QuarantineRecord:
    id: str
    state: str
    original_path: bytes
    sha256: str | None
    size: int | None
    uid: int | None
    gid: int | None
    mode: int | None
    atime_ns: int | None
    mtime_ns: int | None
    xattrs: dict[str, bytes] = field(default_factory=dict)
    rules: tuple[str, ...] = ()
    event: str | None = None
    detected_at: float | None = None
    quarantined_at: float | None = None
    detail: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "QuarantineRecord":
        xattrs = {k: base64.b64decode(v) for k, v in json.loads(row.get("xattrs") or "{}").items()}
        return cls(
            id=row["id"], state=row["state"], original_path=bytes(row["original_path"]),
            sha256=row["sha256"], size=row["size"], uid=row["uid"], gid=row["gid"], mode=row["mode"],
            atime_ns=row["atime_ns"], mtime_ns=row["mtime_ns"], xattrs=xattrs,
            rules=tuple(json.loads(row["rules"] or "[]")), event=row["event"],
            detected_at=row["detected_at"], quarantined_at=row["quarantined_at"], detail=row["detail"],
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            # surrogateescape: os.fsencode() of this string gives the original bytes back.
            "original_path": os.fsdecode(self.original_path),
            "sha256": self.sha256,
            "size": self.size,
            "uid": self.uid,
            "gid": self.gid,
            "mode": f"{self.mode:o}" if self.mode is not None else None,
            "atime_ns": self.atime_ns,
            "mtime_ns": self.mtime_ns,
            "xattrs": sorted(self.xattrs),
            "rules": list(self.rules),
            "event": self.event,
            "detected_at": self.detected_at,
            "quarantined_at": self.quarantined_at,
            "detail": self.detail,
        }


def _crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _xor(data: bytes, key: bytes, offset: int) -> bytes:
    """XOR with the key repeated from stream position `offset`; big ints keep it in C."""
    n = len(data)
    if n == 0:
        return b""
    k = offset % len(key)
    rotated = key[k:] + key[:k]
    stream = (rotated * (n // len(rotated) + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")).to_bytes(n, "little")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _split(path: bytes, what: str = "path") -> list[bytes]:
    """Components of an absolute path; '..' is refused rather than resolved."""
    if not path.startswith(b"/"):
        raise QuarantineError(f"{what} {_show(path)} is not absolute")
    parts = [p for p in path.split(b"/") if p not in (b"", b".")]
    if b".." in parts:
        raise QuarantineError(f"{what} {_show(path)} contains '..'; give a plain absolute path")
    return parts


def _open_dir(parts: Sequence[bytes]) -> int:
    """Open /parts... as a directory without following any symlink; O_PATH on the way down."""
    fd = os.open(b"/", os.O_PATH | _DIR)
    try:
        for comp in parts:
            nfd = os.open(comp, os.O_PATH | _DIR, dir_fd=fd)
            os.close(fd)
            fd = nfd
        # The last one for real: fsync needs a non-O_PATH descriptor.
        nfd = os.open(b".", os.O_RDONLY | _DIR, dir_fd=fd)
    finally:
        os.close(fd)
    return nfd


def _show(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace") if path else "<file without a name>"


def _join(parts: Sequence[bytes]) -> bytes:
    return b"/" + b"/".join(parts)


def _read_xattrs(fd: int) -> dict[str, bytes]:
    try:
        names = os.listxattr(fd)
    except OSError:
        return {}  # filesystem without xattrs
    found = {}
    for name in names:
        try:
            found[name] = os.getxattr(fd, name)
        except OSError:
            continue
    return found


class Quarantine:
    def __init__(self, db_path: Path, root: Path) -> None:
        self.db_path = Path(db_path)
        self.root = Path(root)
        self._local = threading.local()

    # --- plumbing -------------------------------------------------------------------------
    def _db(self) -> Store:
        store = getattr(self._local, "store", None)
        if store is None:
            try:
                store = Store(self.db_path)
            except StoreError as exc:
                raise QuarantineError(str(exc)) from exc
            store.db.execute("PRAGMA synchronous = FULL")
            self._local.store = store
        return store

    def close(self) -> None:
        """Close this thread's DB connection (others close with their threads)."""
        store = getattr(self._local, "store", None)
        if store is not None:
            store.close()
            self._local.store = None

    def _table(self):  # type: ignore[no-untyped-def]
        return self._db().table("quarantine")

    def _row(self, qid: str) -> dict[str, Any] | None:
        rows = list(self._table().rows_where("id = ?", [qid]))
        return rows[0] if rows else None

    def _set(self, qid: str, **fields: Any) -> None:
        self._table().update(qid, fields)

    def _drop_row(self, qid: str) -> None:
        self._db().db.execute("DELETE FROM quarantine WHERE id = ?", [qid])

    def _root_fd(self) -> int:
        try:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            st = os.lstat(self.root)
            if not stat.S_ISDIR(st.st_mode):
                raise QuarantineError(f"quarantine dir {self.root} is not a directory")
            fd = os.open(self.root, os.O_RDONLY | _DIR)
            if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, 0):
                os.fchown(fd, 0, 0)
            if stat.S_IMODE(st.st_mode) != 0o700:
                os.fchmod(fd, 0o700)
            return fd
        except OSError as exc:
            raise QuarantineError(f"cannot use quarantine dir {self.root}: {exc.strerror}") from exc

    # --- quarantine -----------------------------------------------------------------------
    def quarantine_path(self, path: bytes | str, rules: Sequence[str], event: str = "on-demand",
                        detected_at: float | None = None) -> QuarantineRecord:
        path = os.path.abspath(os.fsencode(path))
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise QuarantineError(f"cannot open {_show(path)}: {exc.strerror}") from exc
        try:
            return self.quarantine_fd(fd, path, rules, event, detected_at)
        finally:
            os.close(fd)

    def quarantine_fd(self, fd: int, path: bytes | str | None, rules: Sequence[str], event: str,
                      detected_at: float | None = None) -> QuarantineRecord:
        """Move the file open on `fd` (not closed here) and named `path` into the quarantine.

        `path` is a hint: if it does not name the fd's inode (renamed since, or reached through a
        symlinked directory), the kernel's own name for the fd is used. None: only the latter.
        """
        path = os.fsencode(path) if path is not None else b""
        try:
            return self._quarantine(fd, path, tuple(rules), event, detected_at or time.time())
        except QuarantineError as exc:
            log.warning("quarantine_failed", path=_show(path), reason=str(exc))
            raise
        except OSError as exc:  # an unforeseen step failing: say so plainly, never a traceback
            log.warning("quarantine_failed", path=_show(path), reason=str(exc))
            raise QuarantineError(f"cannot quarantine {_show(path)}: {exc.strerror or exc}") from exc

    def _quarantine(self, fd: int, path: bytes, rules: tuple[str, ...], event: str,
                    detected_at: float) -> QuarantineRecord:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise QuarantineError(f"{_show(path)} is not a regular file")
        dirfd, name, path = self._locate(fd, st, path)
        rootfd = -1
        try:
            rootfd = self._root_fd()
            qid = secrets.token_hex(8)
            row = {
                "id": qid, "state": "pending", "original_path": path, "size": st.st_size,
                "uid": st.st_uid, "gid": st.st_gid, "mode": st.st_mode, "atime_ns": st.st_atime_ns,
                "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "dev": st.st_dev, "ino": st.st_ino,
                "xattrs": json.dumps({k: base64.b64encode(v).decode() for k, v in _read_xattrs(fd).items()}),
                "rules": json.dumps(list(rules)), "event": event, "detected_at": detected_at,
            }
            try:
                self._table().insert(row)
            except Exception as exc:  # sqlite3 errors, a full disk among them
                raise QuarantineError(f"cannot write the quarantine journal in {self.db_path}: {exc}") from exc
            _crash_point("after-journal")
            try:
                digest, size = self._store_copy(fd, st, qid, rootfd)
            except BaseException as exc:
                self._roll_back(qid, rootfd)
                if isinstance(exc, OSError):
                    reason = "quarantine storage is full" if exc.errno in _NO_SPACE else exc.strerror
                    raise QuarantineError(
                        f"cannot quarantine {_show(path)}: {reason} ({self.root}); the original is left in place"
                    ) from exc
                raise
            try:
                self._set(qid, state="copied", sha256=digest, size=size)
            except Exception as exc:
                self._roll_back(qid, rootfd)
                raise QuarantineError(f"cannot update the quarantine journal: {exc}; left in place") from exc
            _crash_point("after-copy")
            self._remove_original(qid, fd, st, dirfd, name, path, rootfd)
        finally:
            os.close(dirfd)
            if rootfd >= 0:
                os.close(rootfd)
        record = self.show(qid)
        log.info("quarantined", id=qid, path=_show(path), sha256=digest, size=size, rules=list(rules),
                 kind=event)
        return record

    def _remove_original(self, qid: str, fd: int, st: os.stat_result, dirfd: int, name: bytes, path: bytes,
                         rootfd: int) -> None:
        try:
            current = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        except FileNotFoundError:
            # Deleted by someone else after our copy: the copy is now the only one, keep it.
            self._set(qid, state="done", quarantined_at=time.time(), detail="the original was removed by someone else")
            return
        if (current.st_dev, current.st_ino) != (st.st_dev, st.st_ino):
            self._roll_back(qid, rootfd)
            raise QuarantineError(f"{_show(path)} was replaced while being quarantined; left in place")
        links_before = os.fstat(fd).st_nlink
        try:
            os.unlink(name, dir_fd=dirfd)
        except OSError as exc:  # read-only filesystem, immutable file, ...
            self._roll_back(qid, rootfd)
            raise QuarantineError(f"cannot remove {_show(path)}: {exc.strerror}; left in place") from exc
        os.fsync(dirfd)
        _crash_point("after-unlink")
        detail = self._after_unlink_check(fd, links_before, path)
        self._set(qid, state="done", quarantined_at=time.time(), detail=detail)

    def _after_unlink_check(self, fd: int, links_before: int, path: bytes) -> str | None:
        links_after = os.fstat(fd).st_nlink
        if links_after >= links_before:
            log.warning("quarantine_race", path=_show(path), reason="unlinked entry was not the detected inode")
            return "the name was swapped before removal: the detected inode survives elsewhere"
        if links_after > 0:
            log.warning("quarantine_hardlinks_remain", path=_show(path), links=links_after)
            return f"{links_after} other hard link(s) to the detected inode remain"
        return None

    def _locate(self, fd: int, st: os.stat_result, path: bytes) -> tuple[int, bytes, bytes]:
        """(dirfd, name, path) whose directory entry refers to the inode open on fd."""
        if st.st_nlink == 0:
            raise QuarantineError(f"{_show(path)} was deleted before it could be quarantined")
        candidates = [path] if path else []
        try:
            # The kernel's own name for the open file: no symlinks in it.
            proc = os.readlink(f"/proc/self/fd/{fd}".encode())
            if proc.startswith(b"/") and proc != path:
                candidates.append(proc)
        except OSError:
            pass
        for candidate in candidates:
            try:
                parts = _split(candidate)
                if not parts:
                    continue
                dirfd = _open_dir(parts[:-1])
            except (OSError, QuarantineError):
                continue
            try:
                cur = os.stat(parts[-1], dir_fd=dirfd, follow_symlinks=False)
                if (cur.st_dev, cur.st_ino) == (st.st_dev, st.st_ino):
                    return dirfd, parts[-1], _join(parts)
            except OSError:
                pass
            os.close(dirfd)
        raise QuarantineError(f"{_show(path)} no longer names the detected file (moved or replaced); left in place")

    def _store_copy(self, fd: int, st: os.stat_result, qid: str, rootfd: int) -> tuple[str, int]:
        part = qid + ".part"
        out = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o400,
                      dir_fd=rootfd)
        try:
            key = os.urandom(KEY_LEN)
            _write_all(out, MAGIC + key)
            h = hashlib.sha256()
            offset = 0
            while True:
                # pread: the caller owns fd and its file offset.
                chunk = os.pread(fd, CHUNK, offset)
                if not chunk:
                    break
                h.update(chunk)
                _write_all(out, _xor(chunk, key, offset))
                offset += len(chunk)
            os.fsync(out)
            # Drop the cached pages so the verification below reads what reached the disk.
            os.posix_fadvise(out, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(out)
        after = os.fstat(fd)
        if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (st.st_size, st.st_mtime_ns, st.st_ctime_ns) \
                or offset != st.st_size:
            raise QuarantineError("the file changed while it was being copied; left in place")
        digest = h.hexdigest()
        if self._stored_digest(part, rootfd) != (digest, offset):
            raise QuarantineError("the stored copy does not verify (sha256 mismatch); left in place")
        os.rename(part, qid, src_dir_fd=rootfd, dst_dir_fd=rootfd)
        os.fsync(rootfd)
        return digest, offset

    def _roll_back(self, qid: str, rootfd: int) -> None:
        """Undo a quarantine whose original was not touched: stored files, then the journal row."""
        for name in (qid + ".part", qid):
            try:
                os.unlink(name, dir_fd=rootfd)
            except FileNotFoundError:
                pass
        try:
            os.fsync(rootfd)
            self._drop_row(qid)
        except Exception as exc:  # the row stays `pending`; recover() finishes the job
            log.warning("quarantine_rollback_incomplete", id=qid, reason=str(exc))

    # --- reading stored copies ------------------------------------------------------------
    def _plain_chunks(self, name: str, rootfd: int) -> Iterator[bytes]:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=rootfd)
        try:
            header = os.pread(fd, HEADER_LEN, 0)
            if len(header) != HEADER_LEN or not header.startswith(MAGIC):
                raise QuarantineError(f"stored copy {name} has no quarantine header")
            key = header[len(MAGIC):]
            offset = 0
            while True:
                chunk = os.pread(fd, CHUNK, HEADER_LEN + offset)
                if not chunk:
                    return
                yield _xor(chunk, key, offset)
                offset += len(chunk)
        finally:
            os.close(fd)

    def _stored_digest(self, name: str, rootfd: int) -> tuple[str, int]:
        h, size = hashlib.sha256(), 0
        for chunk in self._plain_chunks(name, rootfd):
            h.update(chunk)
            size += len(chunk)
        return h.hexdigest(), size

    def read_content(self, qid: str) -> bytes:
        """The original bytes of a quarantined file (for inspection and tests)."""
        self._need(qid)
        rootfd = self._root_fd()
        try:
            return b"".join(self._plain_chunks(qid, rootfd))
        except FileNotFoundError as exc:
            raise QuarantineError(f"stored copy of {qid} is missing from {self.root}") from exc
        finally:
            os.close(rootfd)

    # --- queries --------------------------------------------------------------------------
    def list(self) -> list[QuarantineRecord]:
        rows = self._table().rows_where(order_by="coalesce(quarantined_at, detected_at) DESC, id")
        return [QuarantineRecord.from_row(r) for r in rows]

    def show(self, qid: str) -> QuarantineRecord:
        return QuarantineRecord.from_row(self._need(qid))

    def _need(self, qid: str, state: str | None = None) -> dict[str, Any]:
        row = self._row(qid)
        if row is None:
            raise QuarantineError(f"no quarantined file with id {qid!r}")
        if state is not None and row["state"] != state:
            raise QuarantineError(f"quarantine entry {qid} is {row['state']!r}, not {state!r}; "
                                  "restart the daemon to finish or roll back the interrupted operation")
        return row

    # --- restore --------------------------------------------------------------------------
    def restore(self, qid: str, to: bytes | str | None = None, force: bool = False) -> bytes:
        """Put the file back (content, owner, mode, times, xattrs); returns the path written."""
        rec = QuarantineRecord.from_row(self._need(qid, "done"))
        target = self._restore_target(rec, to)
        parts = _split(target)
        try:
            dirfd = _open_dir(parts[:-1])
        except OSError as exc:
            hint = "" if to is not None else "; use --to to restore elsewhere"
            raise QuarantineError(
                f"cannot restore into {_show(_join(parts[:-1]))}: {exc.strerror}{hint}"
            ) from exc
        rootfd = -1
        try:
            name = parts[-1]
            self._check_target(dirfd, name, target, force)
            rootfd = self._root_fd()
            tmp = b".onaccess-restore-" + qid.encode() + b"-" + secrets.token_hex(4).encode()
            self._set(qid, state="restoring", restore_to=target, restore_tmp=tmp)
            try:
                # Allow-listed before the file appears, so the daemon's scan of the new file
                # (close-write, open) finds it SAFE instead of catching it again.
                self._allow(rec, target)
                self._write_restored(rec, rootfd, dirfd, tmp)
                _crash_point("restore-after-tmp")
                if force:
                    os.rename(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
                else:
                    # link(2) refuses an existing name atomically, unlike rename(2).
                    os.link(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd, follow_symlinks=False)
                    os.unlink(tmp, dir_fd=dirfd)
                os.fsync(dirfd)
            except BaseException as exc:
                try:
                    os.unlink(tmp, dir_fd=dirfd)
                except FileNotFoundError:
                    pass
                self._unallow(rec)
                self._set(qid, state="done", restore_to=None, restore_tmp=None)
                if isinstance(exc, FileExistsError):
                    raise QuarantineError(f"{_show(target)} exists; use --force to overwrite it") from exc
                if isinstance(exc, OSError):
                    raise QuarantineError(f"cannot restore {qid} to {_show(target)}: {exc.strerror}") from exc
                raise
            _crash_point("restore-after-link")
            self._finish_restore(rec, target, rootfd)
        finally:
            os.close(dirfd)
            if rootfd >= 0:
                os.close(rootfd)
        log.info("quarantine_restored", id=qid, path=_show(target), sha256=rec.sha256)
        return target

    def _restore_target(self, rec: QuarantineRecord, to: bytes | str | None) -> bytes:
        if to is None:
            return rec.original_path
        to = os.fsencode(to)
        parts = _split(to, "restore target")
        if not parts:
            raise QuarantineError("restore target / is not a file path")
        try:
            fd = _open_dir(parts)
        except OSError:
            return _join(parts)  # not an existing directory: it names the file itself
        os.close(fd)
        return _join(parts + [os.path.basename(rec.original_path)])

    def _check_target(self, dirfd: int, name: bytes, target: bytes, force: bool) -> None:
        try:
            existing = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(existing.st_mode):
            raise QuarantineError(f"{_show(target)} is a directory")
        if not force:
            raise QuarantineError(f"{_show(target)} exists; use --force to overwrite it")

    def _write_restored(self, rec: QuarantineRecord, rootfd: int, dirfd: int, tmp: bytes) -> None:
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                      dir_fd=dirfd)
        try:
            h = hashlib.sha256()
            try:
                for chunk in self._plain_chunks(rec.id, rootfd):
                    h.update(chunk)
                    _write_all(out, chunk)
            except FileNotFoundError as exc:
                raise QuarantineError(f"stored copy of {rec.id} is missing from {self.root}") from exc
            if h.hexdigest() != rec.sha256:
                raise QuarantineError(f"stored copy of {rec.id} is damaged (sha256 mismatch); nothing restored")
            for xname, value in rec.xattrs.items():
                try:
                    os.setxattr(out, xname, value)
                except OSError as exc:
                    log.warning("restore_xattr_failed", id=rec.id, xattr=xname, reason=exc.strerror)
            if rec.uid is not None and rec.gid is not None:
                os.fchown(out, rec.uid, rec.gid)
            if rec.mode is not None:
                os.fchmod(out, stat.S_IMODE(rec.mode))  # after chown, which clears set-id bits
            if rec.atime_ns is not None and rec.mtime_ns is not None:
                os.utime(out, ns=(rec.atime_ns, rec.mtime_ns))
            os.fsync(out)
        finally:
            os.close(out)

    def _allow(self, rec: QuarantineRecord, target: bytes) -> None:
        store = self._db()
        if rec.sha256 and not store.allowed(rec.sha256):  # keep an admin's own entry and reason
            store.allow_add(rec.sha256, reason=f"restored from quarantine {rec.id}", path=target)

    def _unallow(self, rec: QuarantineRecord) -> None:
        """Undo `_allow` for a restore that did not happen (only the entry it made)."""
        store = self._db()
        ours = f"restored from quarantine {rec.id}"
        if rec.sha256 and any(e["sha256"] == rec.sha256 and e["reason"] == ours for e in store.allow_list()):
            store.allow_remove(rec.sha256)

    def _finish_restore(self, rec: QuarantineRecord, target: bytes, rootfd: int) -> None:
        self._allow(rec, target)
        try:
            os.unlink(rec.id, dir_fd=rootfd)
        except FileNotFoundError:
            pass
        os.fsync(rootfd)
        self._drop_row(rec.id)

    # --- delete / purge -------------------------------------------------------------------
    def delete(self, qid: str) -> None:
        row = self._need(qid)
        if row["state"] not in ("done", "deleting"):
            self._need(qid, "done")  # raises with the explanation
        self._set(qid, state="deleting")
        rootfd = self._root_fd()
        try:
            self._finish_delete(qid, rootfd)
        finally:
            os.close(rootfd)
        log.info("quarantine_deleted", id=qid, sha256=row["sha256"])

    def _finish_delete(self, qid: str, rootfd: int) -> None:
        for name in (qid, qid + ".part"):
            try:
                os.unlink(name, dir_fd=rootfd)
            except FileNotFoundError:
                pass
        _crash_point("delete-after-unlink")
        os.fsync(rootfd)
        self._drop_row(qid)

    def purge(self, older_than_days: float) -> int:
        if older_than_days < 0:
            raise QuarantineError("--older-than must be zero or more days")
        cutoff = time.time() - older_than_days * 86400
        rows = list(self._table().rows_where("state = 'done' AND quarantined_at < ?", [cutoff]))
        for row in rows:
            self.delete(row["id"])
        return len(rows)

    # --- recovery -------------------------------------------------------------------------
    def recover(self) -> builtins.list[str]:
        """At daemon start: finish or roll back every interrupted move; ids touched."""
        touched: builtins.list[str] = []
        rootfd = self._root_fd()
        try:
            rows = list(self._table().rows_where("state != 'done'"))
            for row in rows:
                try:
                    outcome = self._recover_one(row, rootfd)
                except Exception as exc:
                    log.error("quarantine_recover_failed", id=row["id"], state=row["state"], reason=str(exc))
                    continue
                touched.append(row["id"])
                log.info("quarantine_recovered", id=row["id"], state=row["state"], outcome=outcome)
            known = {r["id"] for r in self._table().rows_where(select="id")}
            for name in os.listdir(rootfd):
                if name.endswith(".part") and name[:-5] not in known:
                    os.unlink(name, dir_fd=rootfd)
        finally:
            os.close(rootfd)
        return touched

    def _recover_one(self, row: dict[str, Any], rootfd: int) -> str:
        qid, state = row["id"], row["state"]
        if state == "pending":
            self._roll_back(qid, rootfd)  # the original was never touched in this state
            return "rolled back"
        if state == "copied":
            return self._recover_copied(row, rootfd)
        if state == "restoring":
            return self._recover_restoring(row, rootfd)
        if state == "deleting":
            self._finish_delete(qid, rootfd)
            return "deleted"
        raise QuarantineError(f"unknown journal state {state!r}")

    def _recover_copied(self, row: dict[str, Any], rootfd: int) -> str:
        """The copy was verified before `copied` was written; the unlink may or may not have run."""
        qid, path = row["id"], bytes(row["original_path"])
        try:
            stored_ok = self._stored_digest(qid, rootfd) == (row["sha256"], row["size"])
        except (OSError, QuarantineError):
            stored_ok = False
        parts = _split(path)
        try:
            dirfd = _open_dir(parts[:-1])
        except OSError:
            dirfd = -1
        try:
            entry = "absent"
            if dirfd >= 0:
                try:
                    cur = os.stat(parts[-1], dir_fd=dirfd, follow_symlinks=False)
                    same = (cur.st_dev, cur.st_ino) == (row["dev"], row["ino"]) and stat.S_ISREG(cur.st_mode)
                    entry = "same" if same else "other"
                except FileNotFoundError:
                    pass
            if not stored_ok:
                if entry == "same":
                    self._roll_back(qid, rootfd)  # the original is intact: it stays the one copy
                    return "rolled back: stored copy did not verify"
                # Keep the damaged copy: it may be all that is left of the detected file.
                damaged = "the stored copy does not verify"
                self._set(qid, state="done", quarantined_at=time.time(), detail=damaged)
                log.error("quarantine_copy_damaged", id=qid, path=_show(path))
                return f"finished: {damaged}"
            if entry == "same" and self._content_digest(dirfd, parts[-1]) == row["sha256"]:
                os.unlink(parts[-1], dir_fd=dirfd)
                os.fsync(dirfd)
                self._set(qid, state="done", quarantined_at=time.time())
                return "finished: original removed"
            detail: str | None = None
            if entry != "absent":
                detail = "the original was changed or replaced before removal and was left in place"
            self._set(qid, state="done", quarantined_at=time.time(), detail=detail)
            return "finished" + (f": {detail}" if detail else ": original already removed")
        finally:
            if dirfd >= 0:
                os.close(dirfd)

    @staticmethod
    def _exists(dirfd: int, name: bytes) -> bool:
        try:
            os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            return True
        except FileNotFoundError:
            return False

    @staticmethod
    def _content_digest(dirfd: int, name: bytes) -> str | None:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dirfd)
        except OSError:
            return None
        try:
            return sha256_fd(fd)
        finally:
            os.close(fd)

    def _recover_restoring(self, row: dict[str, Any], rootfd: int) -> str:
        qid, target, tmp = row["id"], row["restore_to"], row["restore_tmp"]
        parts = _split(bytes(target))
        try:
            dirfd = _open_dir(parts[:-1])
        except OSError:
            self._unallow(QuarantineRecord.from_row(row))
            self._set(qid, state="done", restore_to=None, restore_tmp=None)
            return "restore rolled back (target directory gone)"
        try:
            placed = self._content_digest(dirfd, parts[-1]) == row["sha256"]
            if tmp:
                try:
                    os.unlink(bytes(tmp), dir_fd=dirfd)
                except FileNotFoundError:
                    pass
            os.fsync(dirfd)
            if placed:
                self._finish_restore(QuarantineRecord.from_row(row), bytes(target), rootfd)
                return "restore finished"
            self._unallow(QuarantineRecord.from_row(row))
            self._set(qid, state="done", restore_to=None, restore_tmp=None)
            return "restore rolled back"
        finally:
            os.close(dirfd)

"""Which files are watched: filesystem marks, subtree membership, excludes, rename tracking.

Owns: the permission group's filesystem marks, the inode ignore marks, and a second,
FID-reporting notification group that sees names moved or hard-linked into a watched subtree.
Hands on: `classify(path)` answers for the daemon; the daemon decides what to reply.

fanotify cannot mark a subtree, so watching /home means marking the filesystem that holds
/home. Events from elsewhere on that filesystem are answered at once and get an ignore mark
that survives writes. A file renamed (or hard-linked) into a watched subtree must then lose that
mark, or `mv` from an unwatched directory would smuggle a binary past the scan: the rename group
removes it. Known gap: an exec racing the rename notification by microseconds can still pass.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Callable

import structlog

from . import fanotify as fan
from .verdicts import Identity

log = structlog.get_logger()

_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_libc.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
_libc.open_by_handle_at.restype = ctypes.c_int
_DELETED = b" (deleted)"


class Where(Enum):
    WATCHED = "watched"
    OUTSIDE = "outside"
    EXCLUDED = "excluded"


def fd_path(fd: int) -> bytes:
    """The path the kernel has for an open fd (" (deleted)" stripped: the name is gone)."""
    path = os.readlink(f"/proc/self/fd/{fd}".encode())
    return path[: -len(_DELETED)] if path.endswith(_DELETED) else path


def _under(path: bytes, roots: tuple[bytes, ...]) -> bool:
    return any(path == r or path.startswith(r.rstrip(b"/") + b"/") for r in roots)


def _dev_of(path: bytes) -> int | None:
    """The filesystem a path is (or, not created yet, would be) on."""
    while True:
        try:
            return os.stat(path).st_dev
        except OSError:
            parent = os.path.dirname(path)
            if parent == path:
                return None
            path = parent


@dataclass(frozen=True)
class MarkedFs:
    dev: int
    root_fd: int  # an fd on the filesystem, for open_by_handle_at
    whole: bool  # a watched path is the filesystem's root: every event on it is watched
    excludes: bool = False  # an exclude (the daemon's own state dir, say) lies on this filesystem


class Watches:
    def __init__(self, group: int, perm_mask: int, watch: tuple[Path, ...], exclude: list[Path],
                 features: fan.Features | None = None) -> None:
        self.group = group
        features = features or fan.probe()
        # FAN_MARK_IGNORE (6.0) and FAN_MARK_EVICTABLE (5.19) where the kernel has them; the
        # older FAN_MARK_IGNORED_MASK otherwise (then marks pin their inodes in memory).
        self._ignore_flag = fan.FAN_MARK_IGNORE if features.mark_ignore else fan.FAN_MARK_IGNORED_MASK
        self._evictable = fan.FAN_MARK_EVICTABLE if features.mark_evictable else 0
        self.perm_mask = perm_mask
        # What an ignore mark suppresses: every event this group asks for.
        self.ignore_mask = perm_mask
        self.roots = tuple(os.fsencode(os.path.realpath(p)) for p in watch)
        self.excludes = tuple(os.fsencode(os.path.realpath(p)) for p in exclude)
        self.filesystems: dict[int, MarkedFs] = {}
        self.rename_group: int | None = None

    # --- set-up ---------------------------------------------------------------------------
    def mark_all(self) -> list[bytes]:
        """Mark the filesystem of every watch path; returns the paths skipped as missing."""
        missing = [r for r in self.roots if not os.path.lexists(r)]
        self.roots = tuple(r for r in self.roots if r not in missing)
        if not self.roots:
            raise FileNotFoundError("none of the watch paths exists: "
                                    + ", ".join(os.fsdecode(m) for m in missing))
        for root in self.roots:
            st = os.stat(root)
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(f"watch path {os.fsdecode(root)} is not a directory")
            fan.mark(self.group, fan.FAN_MARK_ADD | fan.FAN_MARK_FILESYSTEM, self.perm_mask, root)
            whole = os.path.ismount(root)
            known = self.filesystems.get(st.st_dev)
            if known is None:
                fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                self.filesystems[st.st_dev] = MarkedFs(st.st_dev, fd, whole)
            elif whole and not known.whole:
                self.filesystems[st.st_dev] = MarkedFs(st.st_dev, known.root_fd, True)
        exclude_devs = {_dev_of(e) for e in self.excludes}
        for dev, fs in self.filesystems.items():
            self.filesystems[dev] = MarkedFs(fs.dev, fs.root_fd, fs.whole, dev in exclude_devs)
        if any(not fs.whole for fs in self.filesystems.values()):
            self._start_rename_group()
        return missing

    def _start_rename_group(self) -> None:
        group = fan.init(fan.FAN_CLASS_NOTIF | fan.FAN_REPORT_DFID_NAME | fan.FAN_CLOEXEC | fan.FAN_NONBLOCK)
        for fs in self.filesystems.values():
            if not fs.whole:
                fan.mark(group, fan.FAN_MARK_ADD | fan.FAN_MARK_FILESYSTEM,
                         fan.FAN_MOVED_TO | fan.FAN_CREATE | fan.FAN_ONDIR, None, fs.root_fd)
        self.rename_group = group

    def close(self) -> None:
        if self.rename_group is not None:
            os.close(self.rename_group)
            self.rename_group = None
        for fs in self.filesystems.values():
            os.close(fs.root_fd)
        self.filesystems.clear()

    # --- questions ------------------------------------------------------------------------
    def needs_path(self, dev: int) -> bool:
        """False when every file on this filesystem is watched and nothing on it is excluded:
        then no readlink is needed to tell."""
        fs = self.filesystems.get(dev)
        return fs is None or not fs.whole or fs.excludes

    def classify(self, path: bytes) -> Where:
        if _under(path, self.excludes):
            return Where.EXCLUDED
        return Where.WATCHED if _under(path, self.roots) else Where.OUTSIDE

    # --- ignore marks ---------------------------------------------------------------------
    def ignore(self, fd: int, survive_writes: bool) -> None:
        """Stop the kernel asking about this inode. Without survive_writes a write clears it."""
        flags = fan.FAN_MARK_ADD | self._ignore_flag | self._evictable
        if survive_writes:
            flags |= fan.FAN_MARK_IGNORED_SURV_MODIFY
        try:
            fan.mark(self.group, flags, self.ignore_mask, None, fd)
        except fan.FanotifyError as exc:
            # EEXIST: a mark with other flags is there (e.g. survive_writes changed): replace it.
            if exc.errno != errno.EEXIST:
                raise
            self.unignore(fd)
            fan.mark(self.group, flags, self.ignore_mask, None, fd)

    def ignore_unchanged(self, fd: int, identity: Identity, still_valid: Callable[[], bool] = lambda: True) -> bool:
        """Ignore-mark a file judged SAFE, unless it is no longer what was judged; True if marked.

        The mark goes on first and the identity is checked after: a write before the mark is
        seen here (and the mark taken back), a write after it clears the mark in the kernel.
        `still_valid` is asked after the mark too (the verdict's rules may have been replaced).
        """
        self.ignore(fd, survive_writes=False)
        if Identity.from_stat(os.fstat(fd)) != identity or not still_valid():
            self.unignore(fd)
            return False
        return True

    def unignore(self, fd: int, name: bytes | None = None) -> None:
        try:
            fan.mark(self.group, fan.FAN_MARK_REMOVE | self._ignore_flag | fan.FAN_MARK_DONT_FOLLOW,
                     self.ignore_mask, name, fd)
        except fan.FanotifyError as exc:
            if exc.errno != errno.ENOENT:
                raise

    def flush_ignores(self) -> None:
        """Drop every inode mark (all of ours are ignore marks): after a rules change."""
        fan.mark(self.group, fan.FAN_MARK_FLUSH, 0)

    # --- names arriving in a watched subtree ---------------------------------------------
    def drain_renames(self) -> int:
        """Handle MOVED_TO/CREATE records; returns how many ignore marks were cleared."""
        assert self.rename_group is not None
        cleared = 0
        for ev in fan.read_events(self.rename_group):
            if ev.fd >= 0:  # FID groups report no fd; close defensively if one ever comes
                os.close(ev.fd)
            if ev.overflow:
                # Lost names: the only safe answer is to forget every ignore mark.
                self.flush_ignores()
                log.warning("rename_queue_overflow", action="flushed_ignore_marks")
                continue
            for info in ev.info:
                if info.info_type == fan.FAN_EVENT_INFO_TYPE_DFID_NAME and info.name:
                    cleared += self._arrived(ev.mask, info)
        return cleared

    def _arrived(self, mask: int, info: fan.FidInfo) -> int:
        dirfd = self._open_handle(info)
        if dirfd is None:
            return 0
        try:
            dirpath = fd_path(dirfd)
            if self.classify(dirpath + b"/" + info.name) is not Where.WATCHED:
                return 0
            if mask & fan.FAN_ONDIR:
                if mask & fan.FAN_MOVED_TO:
                    # A whole directory moved in: its files may carry ignore marks. Flushing is
                    # cheaper and surer than walking it; marks come back on the next access.
                    self.flush_ignores()
                    log.info("ignore_marks_flushed", reason="directory_moved_in",
                             path=os.fsdecode(dirpath + b"/" + info.name))
                    return 1
                return 0
            if mask & fan.FAN_CREATE:
                try:
                    st = os.stat(info.name, dir_fd=dirfd, follow_symlinks=False)
                except OSError:
                    return 0
                if st.st_nlink < 2:  # a brand-new file has no mark to lose
                    return 0
            self.unignore(dirfd, info.name)
            return 1
        except OSError as exc:
            log.debug("rename_check_failed", error=str(exc))
            return 0
        finally:
            os.close(dirfd)

    def _open_handle(self, info: fan.FidInfo) -> int | None:
        raw = struct.pack("=Ii", len(info.handle), info.handle_type) + info.handle
        for fs in self.filesystems.values():
            if fs.whole:
                continue
            fd = _libc.open_by_handle_at(fs.root_fd, raw, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            if fd >= 0:
                return fd
        return None

"""Thin fanotify binding: the syscalls, event parsing, responses and marks. No policy.

Owns: the constants, `fanotify_init`/`fanotify_mark` through libc, parsing of the byte stream a
group fd yields, and the response write. Hands on: `Event` values whose `fd` the CALLER owns from
the moment `parse()` returns it: for a permission event the caller must `respond()` exactly once
and then close the fd; for a notification event it must close the fd. `parse()` never closes an
fd and never drops an event whose metadata is well-formed, so no fd can leak inside this module.

pyfanotify cannot answer permission events, hence this binding.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from dataclasses import dataclass, field

# fanotify_init flags
FAN_CLOEXEC = 0x1
FAN_NONBLOCK = 0x2
FAN_CLASS_NOTIF = 0x0
FAN_CLASS_CONTENT = 0x4
FAN_UNLIMITED_QUEUE = 0x10
FAN_UNLIMITED_MARKS = 0x20
FAN_ENABLE_AUDIT = 0x40
FAN_REPORT_FID = 0x200
FAN_REPORT_DIR_FID = 0x400
FAN_REPORT_NAME = 0x800
FAN_REPORT_DFID_NAME = FAN_REPORT_DIR_FID | FAN_REPORT_NAME

# event mask bits
FAN_ACCESS = 0x1
FAN_MODIFY = 0x2
FAN_ATTRIB = 0x4
FAN_CLOSE_WRITE = 0x8
FAN_CLOSE_NOWRITE = 0x10
FAN_OPEN = 0x20
FAN_MOVED_FROM = 0x40
FAN_MOVED_TO = 0x80
FAN_CREATE = 0x100
FAN_DELETE = 0x200
FAN_OPEN_EXEC = 0x1000
FAN_Q_OVERFLOW = 0x4000
FAN_OPEN_PERM = 0x10000
FAN_ACCESS_PERM = 0x20000
FAN_OPEN_EXEC_PERM = 0x40000
FAN_ONDIR = 0x40000000
PERM_EVENTS = FAN_OPEN_PERM | FAN_ACCESS_PERM | FAN_OPEN_EXEC_PERM

# fanotify_mark flags
FAN_MARK_ADD = 0x1
FAN_MARK_REMOVE = 0x2
FAN_MARK_DONT_FOLLOW = 0x4
FAN_MARK_IGNORED_MASK = 0x20
FAN_MARK_IGNORED_SURV_MODIFY = 0x40
FAN_MARK_FLUSH = 0x80
FAN_MARK_EVICTABLE = 0x200
FAN_MARK_IGNORE = 0x400
FAN_MARK_INODE = 0x0
FAN_MARK_MOUNT = 0x10
FAN_MARK_FILESYSTEM = 0x100

# responses
FAN_ALLOW = 0x1
FAN_DENY = 0x2
FAN_AUDIT = 0x10

FAN_NOFD = -1
FANOTIFY_METADATA_VERSION = 3
AT_FDCWD = -100

# info record types
FAN_EVENT_INFO_TYPE_FID = 1
FAN_EVENT_INFO_TYPE_DFID_NAME = 2
FAN_EVENT_INFO_TYPE_DFID = 3

_METADATA = struct.Struct("=IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
_INFO_HEADER = struct.Struct("=BBH")  # info_type, pad, len
_RESPONSE = struct.Struct("=iI")  # fd, response
METADATA_LEN = _METADATA.size

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_init.restype = ctypes.c_int
_libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
_libc.fanotify_mark.restype = ctypes.c_int


class FanotifyError(OSError):
    pass


def _raise(what: str) -> None:
    err = ctypes.get_errno()
    raise FanotifyError(err, f"{what}: {os.strerror(err)}")


@dataclass(frozen=True, slots=True)
class FidInfo:
    """A FID/DFID(_NAME) record: filesystem id, handle type and bytes, and the name if any."""

    info_type: int
    fsid: bytes
    handle_type: int
    handle: bytes
    name: bytes | None


@dataclass(frozen=True, slots=True)
class Event:
    mask: int
    fd: int
    pid: int
    info: tuple[FidInfo, ...] = field(default=())
    malformed: bool = False  # info records could not be parsed; the fd is still yours

    @property
    def is_permission(self) -> bool:
        return bool(self.mask & PERM_EVENTS)

    @property
    def overflow(self) -> bool:
        return bool(self.mask & FAN_Q_OVERFLOW)


def init(flags: int, event_f_flags: int = os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC) -> int:
    fd = _libc.fanotify_init(flags, event_f_flags)
    if fd < 0:
        _raise("fanotify_init")
    return fd


def mark(group: int, flags: int, mask: int, path: str | bytes | None = None, dirfd: int = AT_FDCWD) -> None:
    """fanotify_mark(2). With `path=None` the object is the file `dirfd` refers to."""
    raw = os.fsencode(path) if path is not None else None
    if _libc.fanotify_mark(group, flags, mask, dirfd, raw) < 0:
        _raise(f"fanotify_mark({os.fsdecode(raw) if raw else f'fd {dirfd}'})")


def respond(group: int, fd: int, allow: bool, audit: bool = False) -> None:
    """Write the verdict for one permission event. Does not close `fd`: its owner does."""
    response = (FAN_ALLOW if allow else FAN_DENY) | (FAN_AUDIT if audit else 0)
    os.write(group, _RESPONSE.pack(fd, response))


def read_events(group: int, bufsize: int = 65536, drain: bool = True) -> list[Event]:
    """Drain what the group fd has now (non-blocking group). The caller owns every returned fd.

    `drain=False`: one read() only, for a caller that polls before each call anyway (the read
    that would only say EAGAIN is a syscall per event on a busy permission path)."""
    events: list[Event] = []
    while True:
        try:
            data = os.read(group, bufsize)
        except BlockingIOError:
            return events
        except InterruptedError:
            continue
        if not data:
            return events
        events.extend(parse(data))
        if not drain:
            return events


def parse(data: bytes) -> list[Event]:
    """Parse a read() buffer into events.

    Stops only where the metadata itself is inconsistent (the length chain is broken, so the
    next event cannot be found); a bad version or bad info record still yields the event, so the
    fd it carries reaches an owner.
    """
    events: list[Event] = []
    offset = 0
    total = len(data)
    while total - offset >= METADATA_LEN:
        event_len, vers, _reserved, metadata_len, mask, fd, pid = _METADATA.unpack_from(data, offset)
        if event_len < METADATA_LEN or event_len > total - offset:
            break
        malformed = vers != FANOTIFY_METADATA_VERSION or not METADATA_LEN <= metadata_len <= event_len
        info: tuple[FidInfo, ...] = ()
        if not malformed and metadata_len < event_len:
            try:
                info = tuple(_parse_info(data[offset + metadata_len: offset + event_len]))
            except (ValueError, struct.error):
                malformed = True
        events.append(Event(mask, fd, pid, info, malformed))
        offset += event_len
    return events


def _parse_info(blob: bytes) -> list[FidInfo]:
    records: list[FidInfo] = []
    pos = 0
    while pos < len(blob):
        info_type, _pad, length = _INFO_HEADER.unpack_from(blob, pos)
        if length < _INFO_HEADER.size or pos + length > len(blob):
            raise ValueError("bad info record length")
        body = blob[pos + _INFO_HEADER.size: pos + length]
        if info_type in (FAN_EVENT_INFO_TYPE_FID, FAN_EVENT_INFO_TYPE_DFID_NAME, FAN_EVENT_INFO_TYPE_DFID):
            fsid = body[:8]
            handle_bytes, handle_type = struct.unpack_from("=Ii", body, 8)
            handle_end = 16 + handle_bytes
            if len(fsid) != 8 or handle_end > len(body):
                raise ValueError("bad file handle")
            name = None
            if info_type == FAN_EVENT_INFO_TYPE_DFID_NAME:
                name = body[handle_end:].split(b"\0", 1)[0]
            records.append(FidInfo(info_type, fsid, handle_type, body[16:handle_end], name))
        pos += length
    return records


@dataclass(frozen=True)
class Features:
    """What this kernel's fanotify offers (probed by trying, not by version numbers)."""

    permission_events: bool
    mark_ignore: bool
    mark_evictable: bool
    report_dfid_name: bool
    reason: str = ""


def probe() -> Features:
    try:
        group = init(FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK)
    except FanotifyError as exc:
        return Features(False, False, False, False, str(exc))
    try:
        # Ignore marks on throw-away memfd inodes: never a mark on a real filesystem here.
        mark_ignore = _try_mark(group, FAN_MARK_ADD | FAN_MARK_IGNORE)
        evictable = _try_mark(group, FAN_MARK_ADD | FAN_MARK_IGNORED_MASK | FAN_MARK_EVICTABLE)
    finally:
        os.close(group)
    try:
        os.close(init(FAN_CLASS_NOTIF | FAN_REPORT_DFID_NAME | FAN_CLOEXEC))
        dfid = True
    except FanotifyError:
        dfid = False
    return Features(True, mark_ignore, evictable, dfid)


def _try_mark(group: int, flags: int) -> bool:
    probe_fd = os.memfd_create("onaccess-probe", os.MFD_CLOEXEC)
    try:
        mark(group, flags, FAN_OPEN_PERM, None, probe_fd)
        return True
    except FanotifyError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return False
        raise
    finally:
        os.close(probe_fd)

"""The fanotify binding: parser fuzzing (never crashes, never loses an fd) and real marks on a tmpfs."""

from __future__ import annotations

import os
import select
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from hypothesis import given, settings, strategies as st

from scanner import fanotify as fan

from oatest import need


def _meta(fd: int, mask: int = fan.FAN_OPEN_PERM, pid: int = 1, extra: bytes = b"", vers: int = 3) -> bytes:
    length = fan.METADATA_LEN + len(extra)
    return struct.pack("=IBBHQii", length, vers, 0, fan.METADATA_LEN, mask, fd, pid) + extra


def _open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=512))
def test_parse_random_bytes_never_crashes(data: bytes) -> None:
    for ev in fan.parse(data):
        assert isinstance(ev.fd, int)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=64), st.integers(0, 255)), min_size=1, max_size=8))
def test_every_well_formed_event_reaches_an_owner(chunks: list[tuple[bytes, int]]) -> None:
    """Events with real fds and garbage info records or versions: each fd comes back, none leaks."""
    before = _open_fds()
    buf = b""
    fds = []
    for garbage, vers in chunks:
        fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        fds.append(fd)
        buf += _meta(fd, extra=garbage, vers=vers)
    events = fan.parse(buf)
    assert [e.fd for e in events] == fds
    for e in events:
        os.close(e.fd)
    assert _open_fds() == before


def test_parse_info_records() -> None:
    handle = b"\x01\x02\x03\x04\x05\x06\x07\x08"
    body = b"F" * 8 + struct.pack("=Ii", len(handle), 1) + handle + b"name\xff\0\0\0"
    record = struct.pack("=BBH", fan.FAN_EVENT_INFO_TYPE_DFID_NAME, 0, 4 + len(body)) + body
    (ev,) = fan.parse(_meta(fan.FAN_NOFD, fan.FAN_MOVED_TO, extra=record))
    assert not ev.malformed
    assert ev.info[0].name == b"name\xff" and ev.info[0].handle == handle
    # A record claiming more bytes than there are: the event survives, marked malformed.
    bad = struct.pack("=BBH", fan.FAN_EVENT_INFO_TYPE_FID, 0, 200) + body
    (ev,) = fan.parse(_meta(7, extra=bad))
    assert ev.malformed and ev.fd == 7


def test_truncated_buffer_stops_cleanly() -> None:
    whole = _meta(5) + _meta(6)
    assert [e.fd for e in fan.parse(whole[:-3])] == [5]


def test_permission_roundtrip_and_ignore_mark(tmpfs: Path) -> None:
    """Real kernel: deny, allow, and an ignore mark that a write clears."""
    need(fan.probe().permission_events, "fanotify permission events")
    target = tmpfs / "f"
    target.write_bytes(b"hello")
    group = fan.init(fan.FAN_CLASS_CONTENT | fan.FAN_CLOEXEC | fan.FAN_NONBLOCK)
    try:
        fan.mark(group, fan.FAN_MARK_ADD | fan.FAN_MARK_FILESYSTEM, fan.FAN_OPEN_PERM, str(tmpfs))
        answers = iter([False, True])
        seen: list[int] = []

        def answer(n: int) -> None:
            end = time.monotonic() + 10
            while n and time.monotonic() < end:
                select.select([group], [], [], 0.1)
                for ev in fan.read_events(group):
                    seen.append(ev.mask)
                    fan.respond(group, ev.fd, next(answers))
                    os.close(ev.fd)
                    n -= 1

        code = "import sys\ntry:\n open(sys.argv[1]).close(); print('ok')\nexcept OSError as e: print(e.errno)"
        for expected in (str(1), "ok"):  # EPERM == 1
            t = threading.Thread(target=answer, args=(1,))
            t.start()
            r = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=10)
            t.join(10)
            assert r.stdout.strip() == expected
        assert all(m & fan.FAN_OPEN_PERM for m in seen)
        # Ignore mark on the inode: the next open produces no event at all.
        # By path: marking must not open the file (our own open would wait for our own answer).
        fan.mark(group, fan.FAN_MARK_ADD | fan.FAN_MARK_IGNORE | fan.FAN_MARK_EVICTABLE, fan.FAN_OPEN_PERM,
                 str(target))
        r = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=10)
        assert r.stdout.strip() == "ok" and fan.read_events(group) == []
        # A write clears an ignore mark made without SURV_MODIFY: the kernel asks again.
        os.truncate(target, 3)  # by path: a modification without an open we would have to answer
        proc = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True)
        events = []
        end = time.monotonic() + 10
        while not events and time.monotonic() < end:
            events = fan.read_events(group)
            time.sleep(0.01)
        assert events, "write did not clear the ignore mark"
        for ev in events:
            fan.respond(group, ev.fd, True)
            os.close(ev.fd)
        assert proc.communicate(timeout=10)[0].strip() == "ok"
    finally:
        os.close(group)


def test_probe_reports_features() -> None:
    need(os.geteuid() == 0, "root")
    f = fan.probe()
    assert f.permission_events and f.mark_ignore and f.mark_evictable and f.report_dfid_name

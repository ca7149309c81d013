"""The reader thread: the only reader of the permission group fd, and its triage.

Owns: reading and parsing the group fd, and settling on the spot every event that needs no
verdict state (`Triage`), closing its fd:
  - the daemon's OWN accesses (its pid, its scan workers' pids): allowed;
  - opens of an EMPTY regular file, when the rules do not flag empty files: allowed. Every
    O_CREAT opens an empty file first, so an untar of 5,000 files is 5,000 of these;
  - CLOSE_WRITE of a file the background-scan policy leaves to its first open (with
    `close_write_scan = "executables"`: anything without an x bit or executable magic): dropped.
  - CLOSE_WRITE of a small executable (`inline_scan_max`): scanned right here. Clean: an ignore
    mark goes on and a `Prescanned` (which now owns the fd) is handed to the loop to record.
    A written binary is usually run at once; scanned here, its verdict is in place before the
    exec is even asked about. Matches and errors are not decided here: the event goes on.
  - an open/exec of a file this thread itself found clean moments ago (the last RECENT ones,
    same identity, same rules): allowed. That is the exec asked before the mark went on.
Every other event, with the ownership of its fd, is handed to the event loop in one batch per
read, in order (`loop.call_soon_threadsafe(deliver, items)`), where `Daemon._reply` answers it.

Why a thread: a process that marks a filesystem with permission events and then opens a file on
it waits for its own answer. If the event loop itself ever opens such a file (a lazy import, an
SQLite temp file, re-seeding the BPF map from recorded paths), only another thread can answer
it. This thread never opens a file and never waits on the loop, so the daemon cannot deadlock on
itself. Triage costs one fstat (and for CLOSE_WRITE a 4-byte pread) per event and spares the
loop's wake-up, which is most of an event's cost in Python. An inline scan that takes longer
than INLINE_SLOW_S (a heavy rule set) turns inline scanning off until the rules change: this
thread must stay quick to answer.
"""

from __future__ import annotations

import asyncio
import os
import select
import stat
import threading
import time
from dataclasses import dataclass
from typing import Callable

import structlog

from . import engine
from . import fanotify as fan
from .verdicts import Identity
from .watches import Watches, Where, fd_path

log = structlog.get_logger()

# What a file starts with when it is run or loaded as code: ELF, a script, a PE image.
EXECUTABLE_MAGIC = (b"\x7fELF", b"#!", b"MZ")
INLINE_SLOW_S = 0.01
INLINE_TIMEOUT_S = 1.0
RECENT = 256
HOLD_MS = 20  # the longest a Prescanned waits to be handed on (SQLite batches them anyway)
HOLD_MAX = 64


@dataclass(frozen=True)
class Triage:
    """The state triage may use. Replaced whole by the loop (rules reload), never mutated."""

    empty_is_dangerous: bool
    close_write: str  # all | executables | off (then CLOSE_WRITE is not even asked for)
    rules: engine.RuleSet | None = None  # for inline scans; None: none
    generation: int = 0
    inline_max: int = 0


@dataclass(frozen=True)
class Prescanned:
    """A written file the reader scanned and found clean. Its fd belongs to the loop now."""

    fd: int
    identity: Identity
    generation: int
    marked: bool  # an ignore mark is on (the file was unchanged after it went on)


Item = fan.Event | Prescanned


@dataclass
class ReaderCounters:
    answered_own: int = 0
    answered_empty: int = 0
    close_write_left: int = 0  # CLOSE_WRITE not scanned by policy: the file is scanned at first open
    inline_scans: int = 0
    answered_inline: int = 0  # opens/execs of files this thread had just scanned clean
    inline_disabled: int = 0  # times an inline scan was too slow and inline scanning was turned off


def looks_executable(fd: int, mode: int) -> bool:
    if mode & 0o111:
        return True
    try:
        head = os.pread(fd, 4, 0)
    except OSError:
        return True  # cannot tell: let the loop decide (and log) as before
    return head.startswith(EXECUTABLE_MAGIC)


class EventReader(threading.Thread):
    def __init__(self, group: int, loop: asyncio.AbstractEventLoop, deliver: Callable[[list[Item]], None],
                 own_pids: Callable[[], frozenset[int]], triage: Triage, watches: Watches | None = None) -> None:
        super().__init__(name="fanotify-reader", daemon=True)
        self._group = group
        self._loop = loop
        self._deliver = deliver
        self._own_pids = own_pids
        self.triage = triage  # the loop assigns a new one on reload: one atomic attribute store
        self._watches = watches  # for subtree checks and ignore marks (thread-safe: syscalls, frozen data)
        self._too_slow: Triage | None = None  # inline scanning is off while this is the triage
        # Files this thread scanned clean, newest last: inode -> (identity, generation).
        self._recent: dict[tuple[int, int], tuple[Identity, int]] = {}
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stopping = False
        self.counters = ReaderCounters()  # read by the loop for status; int updates are atomic under the GIL

    def run(self) -> None:
        poller = select.poll()
        poller.register(self._group, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        # Items not handed on yet. Only `Prescanned` ones wait here (nobody waits for them, and
        # waking the loop per written file cost as much as the scan); anything else goes at
        # once and takes them along, ahead of itself, so the loop sees everything in order.
        held: list[Item] = []
        while not self._stopping:
            try:
                ready = poller.poll(HOLD_MS if held else None)
                events = fan.read_events(self._group, drain=False) if ready else []  # poll() says when there is more
            except InterruptedError:
                continue
            except OSError as exc:
                if self._stopping:
                    break
                log.error("fanotify_read_failed", error=str(exc))
                continue
            own = self._own_pids()
            triage = self.triage
            urgent = False
            for ev in events:
                if ev.fd < 0:
                    held.append(ev)  # overflow and the like: the loop counts them
                    urgent = True
                elif ev.pid in own:
                    self.counters.answered_own += 1
                    self._allow(ev)
                else:
                    try:
                        item = self._triage(ev, triage)
                    except Exception as exc:  # a bug here must not stop the only reader: hand it on
                        log.error("triage_failed", error=repr(exc))
                        item = ev
                    if item is not None:
                        held.append(item)
                        urgent = urgent or not isinstance(item, Prescanned)
            if held and (urgent or not events or len(held) >= HOLD_MAX):
                try:
                    self._loop.call_soon_threadsafe(self._deliver, held)
                except RuntimeError:  # loop closed under us
                    break
                held = []
        # Stopping: the group closes next, and the kernel allows whatever is still unanswered.
        # A held verdict is lost unrecorded: that file is scanned again one day, no more.
        for item in held:
            if isinstance(item, fan.Event):
                self._allow(item)
            else:
                os.close(item.fd)

    def _triage(self, ev: fan.Event, triage: Triage) -> Item | None:
        """Settle `ev` here (None) if it needs no verdict state; else what the loop gets for it."""
        try:
            st = os.fstat(ev.fd)
        except OSError:
            return ev
        if not stat.S_ISREG(st.st_mode):
            return ev
        if ev.is_permission:
            recent = self._recent.get((st.st_dev, st.st_ino))
            if st.st_size == 0 and not triage.empty_is_dangerous:
                # No ignore mark: a file opened empty is almost always being created and is
                # written next, which would clear the mark again.
                self.counters.answered_empty += 1
            elif recent is not None and recent == (Identity.from_stat(st), triage.generation):
                self.counters.answered_inline += 1  # its ignore mark is on already
            else:
                return ev
            self._allow(ev)
            return None
        if not ev.mask & fan.FAN_CLOSE_WRITE:
            return ev
        inline = 0 < st.st_size <= triage.inline_max
        if triage.close_write != "executables" and not inline:
            return ev  # nothing here depends on what the file looks like: skip the pread
        if not looks_executable(ev.fd, st.st_mode):
            if triage.close_write != "executables":
                return ev
            self.counters.close_write_left += 1
            os.close(ev.fd)
            return None
        return (self._prescan(ev, st, triage) or ev) if inline else ev

    def _prescan(self, ev: fan.Event, st: os.stat_result, triage: Triage) -> Prescanned | None:
        """Scan a small written executable here; a `Prescanned` if clean, None to hand `ev` on."""
        watches = self._watches
        if triage.rules is None or watches is None or self._too_slow is triage:
            return None
        try:
            if watches.needs_path(st.st_dev) and watches.classify(fd_path(ev.fd)) is not Where.WATCHED:
                return None  # the loop drops it (and this thread stays out of that policy)
        except OSError:
            return None
        identity = Identity.from_stat(st)
        t0 = time.monotonic()
        try:
            result = triage.rules.match_fd(ev.fd, timeout=INLINE_TIMEOUT_S)
        except (engine.ScanError, OSError):
            return None  # a worker tries again, and the loop logs what goes wrong
        finally:
            spent = time.monotonic() - t0
            if spent > INLINE_SLOW_S:
                self._too_slow = triage
                self.counters.inline_disabled += 1
                log.warning("inline_scan_disabled", seconds=round(spent, 4), size=st.st_size,
                            note="these rules are too slow to scan in the event reader; workers scan every file")
        if result.matches:
            return None  # the loop decides: allow-list, actions, logs
        self.counters.inline_scans += 1
        marked = False
        try:
            # A rules reload replaces the triage before it flushes the marks, so a mark made
            # under the old rules is either flushed by it or taken back here.
            marked = watches.ignore_unchanged(ev.fd, identity, lambda: self.triage is triage)
        except OSError as exc:
            log.debug("ignore_mark_failed", error=str(exc))
        if marked:
            self._recent[identity.inode] = (identity, triage.generation)
            if len(self._recent) > RECENT:
                del self._recent[next(iter(self._recent))]
        return Prescanned(ev.fd, identity, triage.generation, marked)

    def _allow(self, ev: fan.Event) -> None:
        """Allow a permission event (notifications need no answer) and close its fd."""
        try:
            if ev.is_permission:
                fan.respond(self._group, ev.fd, True)
        except OSError as exc:
            log.error("respond_failed", pid=ev.pid, error=str(exc))
        finally:
            os.close(ev.fd)

    def stop(self) -> None:
        self._stopping = True
        os.write(self._wake_w, b"x")
        self.join(timeout=5)
        os.close(self._wake_r)
        os.close(self._wake_w)

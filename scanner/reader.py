"""The reader thread: the only reader of the permission group fd.

Owns: reading and parsing the group fd, and answering the daemon's OWN accesses (the daemon's
pid and its scan workers' pids) on the spot - allow, then close the fd. Every other event, with
the ownership of its fd, is handed to the event loop in one batch per read
(`loop.call_soon_threadsafe(deliver, events)`), where `Daemon._reply` answers it.

Why a thread: a process that marks a filesystem with permission events and then opens a file on
it waits for its own answer. If the event loop itself ever opens such a file (a lazy import, an
SQLite temp file, re-seeding the BPF map from recorded paths), only another thread can answer
it. This thread never opens a file and never waits on the loop, so the daemon cannot deadlock on
itself.
"""

from __future__ import annotations

import asyncio
import os
import select
import threading
from typing import Callable

import structlog

from . import fanotify as fan

log = structlog.get_logger()


class EventReader(threading.Thread):
    def __init__(self, group: int, loop: asyncio.AbstractEventLoop, deliver: Callable[[list[fan.Event]], None],
                 own_pids: Callable[[], frozenset[int]]) -> None:
        super().__init__(name="fanotify-reader", daemon=True)
        self._group = group
        self._loop = loop
        self._deliver = deliver
        self._own_pids = own_pids
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stopping = False
        self.answered_self = 0  # read by the loop for status; an int update is atomic under the GIL

    def run(self) -> None:
        poller = select.poll()
        poller.register(self._group, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stopping:
            try:
                poller.poll()
                events = fan.read_events(self._group)
            except InterruptedError:
                continue
            except OSError as exc:
                if self._stopping:
                    break
                log.error("fanotify_read_failed", error=str(exc))
                continue
            own = self._own_pids()
            theirs = []
            for ev in events:
                if ev.pid in own:
                    self._answer_own(ev)
                else:
                    theirs.append(ev)
            if theirs:
                try:
                    self._loop.call_soon_threadsafe(self._deliver, theirs)
                except RuntimeError:  # loop closed under us: the kernel allows on group close
                    for ev in theirs:
                        self._answer_own(ev)
                    break

    def _answer_own(self, ev: fan.Event) -> None:
        if ev.fd < 0:
            return
        try:
            if ev.is_permission:
                fan.respond(self._group, ev.fd, True)
                self.answered_self += 1
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

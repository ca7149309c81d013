"""The reader thread answers the daemon's own opens even while the event loop itself is blocked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from oatest import REPO

SCENARIO = r"""
import asyncio, os, sys
from scanner import fanotify as fan
from scanner.reader import EventReader

mnt = sys.argv[1]
with open(os.path.join(mnt, "f"), "w") as f:
    f.write("x")
group = fan.init(fan.FAN_CLASS_CONTENT | fan.FAN_CLOEXEC | fan.FAN_NONBLOCK)
fan.mark(group, fan.FAN_MARK_ADD | fan.FAN_MARK_FILESYSTEM, fan.FAN_OPEN_PERM, mnt)
delivered = []

async def main():
    loop = asyncio.get_running_loop()
    reader = EventReader(group, loop, delivered.extend, lambda: frozenset({os.getpid()}))
    reader.start()
    # The loop thread opens a file on the marked filesystem: only the reader can answer it.
    with open(os.path.join(mnt, "f")) as f:
        data = f.read()
    reader.stop()
    print(data, reader.answered_self, len(delivered))

asyncio.run(main())
"""


def test_own_open_from_the_loop_thread_does_not_deadlock(tmpfs: Path) -> None:
    r = subprocess.run([sys.executable, "-c", SCENARIO, str(tmpfs)], capture_output=True, text=True,
                       timeout=30, cwd=REPO)
    assert r.returncode == 0, r.stderr
    data, answered, delivered = r.stdout.split()
    assert data == "x" and int(answered) >= 1 and delivered == "0"

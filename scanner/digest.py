"""Content digests of open files. Owns nothing; hands on hex sha256 strings.

Reads with pread from offset 0: the fd may be an event's (shared with the opener's file
description), and its offset must not move.
"""

from __future__ import annotations

import hashlib
import os

CHUNK = 1 << 20


def sha256_fd(fd: int) -> str:
    h = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, CHUNK, offset):
        h.update(chunk)
        offset += len(chunk)
    return h.hexdigest()

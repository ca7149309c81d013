"""File identity, verdicts and the rule that says when a verdict still holds; the in-memory LRU.

Owns: `Identity` (what a verdict was computed on), `Verdict` (what was decided, with which rules
generation) and `VerdictCache`. Hands on: plain values to the daemon, the store and the BPF map.

Validity, stated once (the BPF program applies the same rule with generation + ctime):
a verdict holds for a file only if the file's identity (dev, ino, size, mtime_ns, ctime_ns) is
the one it was computed on, and - for SAFE - only under the rules generation it was computed
with. A DANGEROUS verdict stays under new rules until the file is rescanned: new rules must not
silently release a known threat.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum


class Decision(str, Enum):
    SAFE = "safe"
    DANGEROUS = "dangerous"


@dataclass(frozen=True, slots=True)
class Identity:
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def from_stat(cls, st: os.stat_result) -> "Identity":
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    @property
    def inode(self) -> tuple[int, int]:
        return (self.dev, self.ino)


@dataclass(frozen=True, slots=True)
class Verdict:
    identity: Identity
    decision: Decision
    generation: int
    rules: tuple[str, ...] = field(default=())

    @property
    def dangerous(self) -> bool:
        return self.decision is Decision.DANGEROUS

    def holds_for(self, identity: Identity, generation: int) -> bool:
        if identity != self.identity:
            return False
        return self.dangerous or self.generation == generation


class VerdictCache:
    """LRU keyed by inode; a stale entry (identity changed) counts as a miss."""

    def __init__(self, capacity: int) -> None:
        self._capacity = max(1, capacity)
        self._entries: OrderedDict[tuple[int, int], Verdict] = OrderedDict()
        # Until the first eviction, every verdict put here is still here: a miss is final for
        # anything that only exists since this cache was made (see Daemon._known).
        self.evicted = False

    def get(self, identity: Identity, generation: int) -> Verdict | None:
        verdict = self._entries.get(identity.inode)
        if verdict is None:
            return None
        if not verdict.holds_for(identity, generation):
            del self._entries[identity.inode]
            return None
        self._entries.move_to_end(identity.inode)
        return verdict

    def put(self, verdict: Verdict) -> None:
        self._entries[verdict.identity.inode] = verdict
        self._entries.move_to_end(verdict.identity.inode)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)
            self.evicted = True

    def forget(self, inode: tuple[int, int]) -> None:
        self._entries.pop(inode, None)

    def clear(self) -> None:
        self._entries.clear()
        self.evicted = True

    def __len__(self) -> int:
        return len(self._entries)

"""Counters and reply-latency percentiles for `onaccess status`. Owns numbers, nothing else."""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field


@dataclass
class Counters:
    perm_events: int = 0  # permission events read from the kernel
    allowed: int = 0
    denials: int = 0
    cache_hits: int = 0  # answered from the LRU or the DB, no scan
    scans: int = 0  # scans completed (permission and background)
    background_scans: int = 0  # of which from CLOSE_WRITE
    background_dropped: int = 0  # CLOSE_WRITE scans not queued: backlog full (scanned on open instead)
    background_skipped: int = 0  # queued, but the file was deleted before its turn
    joined_scans: int = 0  # permission events that waited for a scan already running
    timeouts: int = 0  # answered by the deadline policy
    scan_errors: int = 0
    skipped_self: int = 0  # our own accesses, allowed at once
    outside_watch: int = 0  # outside the watched subtrees / excluded: allowed + ignore mark
    ignore_marks: int = 0
    ignore_marks_cleared_by_rename: int = 0
    kernel_blocks: int = 0  # denials the BPF program made and reported
    queue_overflows: int = 0
    quarantined: int = 0


@dataclass
class Stats:
    counters: Counters = field(default_factory=Counters)
    _latencies_us: deque[float] = field(default_factory=lambda: deque(maxlen=8192))

    def latency(self, seconds: float) -> None:
        self._latencies_us.append(seconds * 1e6)

    def percentiles(self) -> dict[str, float | None]:
        data = sorted(self._latencies_us)
        if not data:
            return {"p50_us": None, "p99_us": None}
        return {"p50_us": round(data[len(data) // 2], 1), "p99_us": round(data[min(len(data) - 1, int(len(data) * 0.99))], 1)}

    def snapshot(self) -> dict[str, object]:
        return {**asdict(self.counters), "latency": self.percentiles()}

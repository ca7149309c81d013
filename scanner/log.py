"""structlog set-up: one JSON object per line, with an `event` name a SIEM can filter on.

Owns the logging configuration only. Event names used across the daemon: `daemon_ready`,
`scan_verdict`, `access_denied`, `blocked_in_kernel`, `scan_timeout`, `scan_error`,
`rules_loaded`, `rules_reload_failed`, `queue_overflow`, `quarantined`, `hook_failed`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TextIO

import structlog


def setup(level: str = "info", log_file: Path | None = None) -> None:
    stream: TextIO
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        # Line-buffered so a SIGKILL loses at most the line being written.
        stream = open(log_file, "a", buffering=1, encoding="utf-8", errors="backslashreplace")
    else:
        stream = sys.stderr
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )

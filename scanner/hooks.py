"""The `on_detect` notification hook: run an admin's command with the detection as JSON on stdin.

Owns only running the hook. The daemon calls `run_hook` from a worker thread after it has
answered the kernel, so a slow or broken hook can never delay a response. The command is split
with shlex and run without a shell, in a session of its own so that a timeout kills everything
it started. Failures are logged as `hook_failed` (with a `reason`) and never raised.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
from typing import Any

import structlog

log = structlog.get_logger()

_STDERR_TAIL = 500


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return os.fsdecode(bytes(value))
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def run_hook(cmd: str, event: dict[str, Any], timeout: float) -> bool:
    """True if the hook ran and exited 0 within `timeout` seconds; False otherwise (logged)."""
    if not cmd.strip():
        return False
    try:
        argv = shlex.split(cmd)
        payload = (json.dumps(event, default=_json_default) + "\n").encode()
    except (ValueError, TypeError) as exc:
        log.warning("hook_failed", cmd=cmd, reason=f"bad hook command or event: {exc}")
        return False
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                close_fds=True, start_new_session=True)
    except OSError as exc:
        log.warning("hook_failed", cmd=cmd, reason=f"cannot run: {exc.strerror or exc}")
        return False
    try:
        _, stderr = proc.communicate(payload, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        log.warning("hook_failed", cmd=cmd, pid=proc.pid, reason=f"timeout after {timeout:g}s; killed")
        return False
    finally:
        if proc.returncode is None:  # an exception other than the timeout: do not leave it behind
            _kill_group(proc)
    if proc.returncode != 0:
        tail = stderr[-_STDERR_TAIL:].decode("utf-8", "backslashreplace").strip()
        log.warning("hook_failed", cmd=cmd, pid=proc.pid, reason=f"exit status {proc.returncode}", stderr=tail)
        return False
    log.debug("hook_ran", cmd=cmd, pid=proc.pid)
    return True


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()

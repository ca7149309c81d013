"""A scan worker process: receives an open fd over its socket, scans it, answers in JSON.

Owns: nothing but its compiled rules and the fd of the job at hand, which it closes when the
answer is sent (the daemon keeps its own copy). Hands on: one JSON answer per request.

Scanning runs in processes, not threads, so the daemon's event loop never waits for a GIL held
by a scan, a crash inside libyara cannot take the daemon down, and background workers can run
at a lower CPU priority without priority inversion.

Wire format (SOCK_SEQPACKET): request = struct "=QdQ" (job id, timeout s, max size) with the
fd in SCM_RIGHTS; answer = {"id", "rules", "sha256"} or {"id", "error", "kind": "timeout" |
"oversize" | "error"}. `sha256` is given when rules matched (the allow-list can only turn a
match into SAFE), else null: hashing every clean file would cost more than scanning it. The
first message a worker sends is {"ready": n} (or {"fatal": message} when its rules do not
compile).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
from pathlib import Path
from typing import Any

from .digest import sha256_fd

REQUEST = struct.Struct("=QdQ")


def scan(rules: Any, fd: int, timeout: float, max_size: int) -> dict[str, Any]:
    from . import engine

    try:
        size = os.fstat(fd).st_size
        if size > max_size:
            return {"kind": "oversize", "error": f"file is {size} bytes, over max_file_size {max_size}"}
        result = rules.match_fd(fd, timeout=timeout)
        return {"rules": list(result.rule_names), "sha256": sha256_fd(fd) if result.matches else None}
    except engine.ScanTimeout as exc:
        return {"kind": "timeout", "error": str(exc)}
    except (engine.ScanError, OSError) as exc:
        return {"kind": "error", "error": str(exc)}


def main(argv: list[str]) -> int:
    from . import engine

    sock = socket.socket(fileno=int(argv[0]))
    spec = json.loads(argv[1])
    try:
        rules = engine.compile_rules([Path(p) for p in spec["paths"]], spec["engine"])
    except (engine.RuleError, ValueError) as exc:
        sock.send(json.dumps({"fatal": str(exc)}).encode())
        return 2
    sock.send(json.dumps({"ready": rules.rule_count, "digest": rules.digest}).encode())
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, 256, 1)
        except (ConnectionResetError, InterruptedError):
            return 0
        if not data:
            return 0  # the daemon closed our socket: retire
        fd = fds[0] if fds else -1
        job_id, timeout, max_size = REQUEST.unpack(data)
        try:
            answer = scan(rules, fd, timeout, max_size) if fd >= 0 else {
                "kind": "error", "error": "no fd received"}
        finally:
            for f in fds:
                os.close(f)
        answer["id"] = job_id
        sock.send(json.dumps(answer).encode())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The root-only Unix control socket between the CLI and a running daemon.

Owns: the socket file (mode 0600 under the state dir), the peer-credential check (uid 0 only),
and the wire format: one JSON request line, one JSON response line. Hands requests to the
`Daemon`'s public methods (status, reload, kernel_view); never touches its internals.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger()

_MAX_REQUEST = 64 * 1024


class ControlError(Exception):
    pass


def _peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


async def serve(path: Path, daemon: Any) -> asyncio.AbstractServer:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        path.unlink()
    except FileNotFoundError:
        pass

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            if _peer_uid(sock) != 0:
                log.warning("control_refused", reason="peer is not root")
                writer.write(b'{"ok": false, "error": "permission denied: root only"}\n')
                return
            line = await asyncio.wait_for(reader.readline(), timeout=5)
            request = json.loads(line[:_MAX_REQUEST] or b"{}")
            response = await _dispatch(daemon, request)
        except Exception as exc:  # a bad client must not hurt the daemon
            response = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        try:
            writer.write(json.dumps(response, default=str).encode() + b"\n")
            await writer.drain()
        finally:
            writer.close()

    old_umask = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(handle, path=str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    return server


async def _dispatch(daemon: Any, request: dict[str, Any]) -> dict[str, Any]:
    cmd = request.get("cmd")
    if cmd == "status":
        return {"ok": True, **daemon.status()}
    if cmd == "reload":
        return await daemon.reload()
    if cmd == "kernel-view":
        return {"ok": True, "kernel": daemon.kernel_view(os.fsencode(request["path"]))}
    return {"ok": False, "error": f"unknown command {cmd!r}"}


def request(sock_path: Path, cmd: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
    """Client side, used by the CLI. ControlError when no daemon answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
            s.settimeout(timeout)
            s.connect(str(sock_path))
            s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise ControlError(f"no daemon is running (control socket {sock_path}: {exc.strerror})") from exc
    except OSError as exc:
        raise ControlError(f"control socket {sock_path}: {exc}") from exc
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise ControlError(f"bad answer from the daemon: {data[:200]!r}") from exc

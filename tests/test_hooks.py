"""The on_detect hook: JSON on stdin, timeouts and failures logged, never raised."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path

from structlog.testing import capture_logs

from scanner.hooks import run_hook

PY = shlex.quote(sys.executable)
EVENT = {"event": "access_denied", "path": b"/tmp/caf\xe9 x", "pid": 42, "rules": ("EICAR",), "kind": "exec"}


def failures(logs: list[dict]) -> list[dict]:
    return [e for e in logs if e["event"] == "hook_failed"]


def test_hook_gets_the_event_as_json_on_stdin(tmp_path: Path) -> None:
    out = tmp_path / "out dir" / "got.json"
    out.parent.mkdir()
    script = "import sys; open(sys.argv[1], 'w').write(sys.stdin.read())"
    with capture_logs() as logs:
        ok = run_hook(f"{PY} -c {shlex.quote(script)} {shlex.quote(str(out))}", EVENT, timeout=10)
    assert ok is True and failures(logs) == []
    text = out.read_text()
    assert text.endswith("\n")
    got = json.loads(text)
    assert got == {"event": "access_denied", "path": os.fsdecode(b"/tmp/caf\xe9 x"), "pid": 42,
                   "rules": ["EICAR"], "kind": "exec"}
    assert os.fsencode(got["path"]) == b"/tmp/caf\xe9 x"


def test_hook_is_not_run_through_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    script = "import sys; sys.stdin.read()"
    ok = run_hook(f"{PY} -c {shlex.quote(script)} ; touch {marker}", EVENT, timeout=10)
    assert ok is True and not marker.exists()


def test_hook_timeout_kills_it_and_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(60)\n"
    )
    start = time.monotonic()
    with capture_logs() as logs:
        ok = run_hook(f"{PY} -c {shlex.quote(script)}", EVENT, timeout=1.5)
    elapsed = time.monotonic() - start
    assert ok is False
    assert elapsed < 10, f"run_hook took {elapsed:.1f}s with a 1.5s timeout"
    [fail] = failures(logs)
    assert "timeout" in fail["reason"] and fail["log_level"] == "warning"
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.05)
    assert not _alive(child), "the hook's own child survived the timeout"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_failing_hook_is_logged_with_its_stderr() -> None:
    script = "import sys; sys.stdin.read(); sys.stderr.write('mail server down'); sys.exit(3)"
    with capture_logs() as logs:
        ok = run_hook(f"{PY} -c {shlex.quote(script)}", EVENT, timeout=10)
    assert ok is False
    [fail] = failures(logs)
    assert fail["reason"] == "exit status 3" and fail["stderr"] == "mail server down"


def test_missing_command_is_logged_not_raised() -> None:
    with capture_logs() as logs:
        ok = run_hook("/nonexistent/onaccess-hook --flag", EVENT, timeout=10)
    assert ok is False
    [fail] = failures(logs)
    assert fail["reason"].startswith("cannot run")


def test_bad_command_line_is_logged_not_raised() -> None:
    with capture_logs() as logs:
        assert run_hook("notify 'unterminated", EVENT, timeout=10) is False
    assert "bad hook command" in failures(logs)[0]["reason"]


def test_hook_that_ignores_stdin_does_not_break() -> None:
    big = dict(EVENT, detail="x" * (1 << 20))  # larger than a pipe buffer
    with capture_logs() as logs:
        assert run_hook("true", big, timeout=10) is True
    assert failures(logs) == []


def test_no_hook_configured() -> None:
    with capture_logs() as logs:
        assert run_hook("", EVENT, timeout=10) is False
    assert logs == []

"""The CLI faces that need no running daemon: scan, rules, doctor, config errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from oatest import EICAR, ONACCESS, REPO


def onaccess(*args: str | bytes, state: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cmd = [*ONACCESS, *map(os.fsdecode, args)]
    if state is not None:
        cmd += ["--state-dir", str(state)]
    return subprocess.run(cmd, capture_output=True, text=True, errors="surrogateescape", timeout=timeout, cwd=REPO)


def test_version() -> None:
    r = onaccess("--version")
    assert r.returncode == 0 and r.stdout.startswith("onaccess ")


def test_scan_exit_codes_like_clamscan(tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "a.txt").write_text("hello")
    (clean / "true").write_bytes(Path("/bin/true").read_bytes())
    r = onaccess("scan", "--json", str(clean), state=tmp_path / "s")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["scanned"] == 2
    dirty = tmp_path / "dirty"
    (dirty / "sub").mkdir(parents=True)
    (dirty / "sub" / b"\xffname".decode("utf-8", "surrogateescape")).write_bytes(EICAR)
    os.mkfifo(dirty / "fifo")  # must be skipped, never opened (it would block)
    r = onaccess("scan", str(dirty), state=tmp_path / "s")
    assert r.returncode == 1
    assert "FOUND" in r.stdout and "EICAR" in r.stdout
    assert "fifo: skipped" in r.stdout
    r = onaccess("scan", "--json", str(tmp_path / "does-not-exist"), state=tmp_path / "s")
    assert r.returncode == 2
    assert json.loads(r.stdout)["errors"][0]["path"].endswith("does-not-exist")
    # On-demand detections are part of the history.
    hist = json.loads(onaccess("events", "--json", state=tmp_path / "s").stdout)
    assert hist and hist[0]["kind"] == "on-demand"


def test_scan_boreal_engine_agrees(tmp_path: Path) -> None:
    (tmp_path / "e").write_bytes(EICAR)
    out = {}
    for engine in ("yara", "boreal"):
        r = onaccess("scan", "--json", "--engine", engine, str(tmp_path / "e"), state=tmp_path / "s")
        assert r.returncode == 1
        out[engine] = json.loads(r.stdout)["found"]
    assert out["yara"] == out["boreal"]


def test_rules_check_reports_file_and_line(tmp_path: Path) -> None:
    good = tmp_path / "good.yar"
    good.write_text('rule ok_rule { strings: $a = "x" condition: $a }\n')
    bad = tmp_path / "bad.yar"
    bad.write_text('rule fine { condition: true }\n\nrule broken {\n  condition: undefined_thing\n}\n')
    r = onaccess("rules", "check", "--json", str(tmp_path))
    assert r.returncode == 2
    problems = json.loads(r.stdout)["problems"]
    assert [(Path(p["file"]).name, p["line"]) for p in problems] == [("bad.yar", 4)]
    r = onaccess("rules", "check", str(good))
    assert r.returncode == 0 and "rules OK" in r.stdout
    assert onaccess("rules", "check").returncode == 0  # the bundled set


def test_rules_list_has_metadata() -> None:
    listing = json.loads(onaccess("rules", "list", "--json").stdout)
    assert len(listing) >= 5
    assert all(r["severity"] and r["description"] for r in listing)


def test_doctor_json() -> None:
    r = onaccess("doctor", "--json")
    out = json.loads(r.stdout)
    names = {c["check"] for c in out["checks"]}
    assert {"fanotify_permission_events", "bpf_lsm_active", "btf", "fan_mark_evictable"} <= names
    assert all(c["ok"] or c["advice"] for c in out["checks"])


def test_status_without_daemon_is_a_clear_error(tmp_path: Path) -> None:
    r = onaccess("status", state=tmp_path)
    assert r.returncode == 2 and "no daemon is running" in r.stderr


def test_config_errors_name_file_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('on_error = "maybe"\n')
    r = onaccess("rules", "list", "--config", str(cfg))
    assert r.returncode == 2 and "on_error" in r.stderr and str(cfg) in r.stderr
    cfg.write_text("no_such_setting = 1\n")
    r = onaccess("rules", "list", "--config", str(cfg))
    assert r.returncode == 2 and "no_such_setting" in r.stderr
    cfg.write_text("this is [ not toml\n")
    assert onaccess("rules", "list", "--config", str(cfg)).returncode == 2


def test_run_refuses_broken_rules(tmp_path: Path) -> None:
    rules = tmp_path / "r"
    rules.mkdir()
    (rules / "x.yar").write_text("rule x { condition: ??? }")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'bundled_rules = false\nrule_dirs = ["{rules}"]\nbpf = "off"\n')
    if os.geteuid() != 0:
        return
    # The watch path does not exist: nothing can ever be marked, even if start-up order changed.
    r = onaccess("run", "--config", str(cfg), "--watch", "/nonexistent-oa", state=tmp_path / "s", timeout=60)
    assert r.returncode == 2 and "x.yar:1" in r.stderr


def test_module_entry_point() -> None:
    r = subprocess.run([sys.executable, "-m", "scanner.cli", "--help"], capture_output=True, text=True, cwd=REPO)
    for command in ("run", "scan", "status", "doctor", "verdict", "rules", "quarantine", "allow", "events"):
        assert command in r.stdout

"""`onaccess quarantine|allow|events`, driven through argparse as cli.py will drive them."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Iterator

import pytest
import structlog

from scanner.cli_threats import parse_since, register
from scanner import log
from scanner.cliutil import CliError, common_options
from scanner.quarantine import Quarantine
from scanner.store import Store

from oatest import EICAR


pytestmark = pytest.mark.usefixtures("root")


@pytest.fixture
def src(tmpfs: Path) -> Path:
    """The 'watched' filesystem the detected files live on (a tmpfs of the test's own)."""
    return tmpfs


class Cli:
    def __init__(self, state: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.state, self.config, self.capsys = state, config, capsys
        parser = argparse.ArgumentParser(prog="onaccess")
        sub = parser.add_subparsers(dest="command", required=True)
        register(sub, [common_options()])
        self.parser = parser

    def __call__(self, *argv: str | bytes) -> tuple[int, str, str]:
        """Run like cli.main will: exit code, stdout, stderr; CliError -> one line, status 2."""
        args = self.parser.parse_args([os.fsdecode(a) for a in argv] + ["--state-dir", str(self.state),
                                                                         "--config", str(self.config)])
        self.capsys.readouterr()
        # As cli.main does: JSON log lines on stderr, so stdout carries only the command's output.
        log.setup("info")
        try:
            code = args.func(args)
        except CliError as exc:
            print(f"onaccess: {exc}", file=__import__("sys").stderr)
            code = 2
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *argv: str | bytes) -> object:
        code, out, err = self(*argv, "--json")
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
def cli(state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Cli]:
    config = tmp_path / "onaccess.toml"
    config.write_text("")  # embedded defaults, whatever /etc/onaccess holds on this host
    try:
        yield Cli(state, config, capsys)
    finally:
        structlog.reset_defaults()  # log.setup() bound this test's captured stderr


def put(path: Path | bytes, data: bytes = EICAR, uid: int = 1234, mode: int = 0o644) -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.chown(path, uid, uid)
    os.chmod(path, mode)


def quarantine(state: Path, path: Path | bytes, rules: tuple[str, ...] = ("EICAR_Test_File",)) -> str:
    """What the daemon (or `scan --quarantine`) does on a detection."""
    log.setup("info")  # on the current (captured) stderr
    q = Quarantine(state / "verdicts.db", state / "quarantine")
    return q.quarantine_path(os.fsencode(path), rules, event="exec").id


def test_quarantine_list_json_and_human(cli: Cli, src: Path, state: Path) -> None:
    code, out, _ = cli("quarantine", "list")
    assert code == 0 and out.strip() == "no quarantined files"
    assert cli.json("quarantine", "list") == []

    odd = bytes(src) + b"/bad-\xff-name"
    put(src / "eicar.com")
    put(odd, EICAR + b"2")
    first = quarantine(state, src / "eicar.com")
    time.sleep(0.01)
    second = quarantine(state, odd)

    items = cli.json("quarantine", "list")
    assert isinstance(items, list) and [i["id"] for i in items] == [second, first]  # newest first
    for item in items:
        assert {"id", "original_path", "sha256", "rules", "quarantined_at"} <= item.keys()
        assert item["rules"] == ["EICAR_Test_File"] and item["state"] == "done"
    assert os.fsencode(items[0]["original_path"]) == odd
    assert items[1]["original_path"] == str(src / "eicar.com")
    assert items[1]["sha256"] == hashlib.sha256(EICAR).hexdigest()

    code, out, _ = cli("quarantine", "list")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 3
    header = lines[0]
    col = header.index("ORIGINAL PATH")
    assert lines[1][col:] == (bytes(src) + b"/bad-\\xff-name").decode()
    assert lines[2][col:] == str(src / "eicar.com")
    for name in ("STATE", "RULES", "SIZE"):
        at = header.index(name)
        assert all(line[at - 2:at] == "  " and line[at] != " " for line in lines[1:])


def test_quarantine_show_restore_delete(cli: Cli, src: Path, state: Path) -> None:
    put(src / "a", mode=0o750)
    put(src / "b", EICAR + b"b")
    qa, qb = quarantine(state, src / "a"), quarantine(state, src / "b")

    shown = cli.json("quarantine", "show", qa)
    assert shown["id"] == qa and shown["uid"] == 1234 and shown["mode"] == "100750"
    code, out, _ = cli("quarantine", "show", qa)
    assert code == 0 and f"original path  {src / 'a'}" in out and "-rwxr-x---" in out

    code, _, err = cli("quarantine", "show", "nope")
    assert code == 2 and "no quarantined file with id 'nope'" in err

    code, _, err = cli("quarantine", "restore", qa, "--to", "../../etc/passwd")
    assert code == 2 and "not absolute" in err
    assert not (src / "a").exists()

    result = cli.json("quarantine", "restore", qa)
    assert result == {"id": qa, "restored_to": str(src / "a"), "allow_listed": True}
    assert (src / "a").read_bytes() == EICAR and os.stat(src / "a").st_mode & 0o777 == 0o750
    allowed = cli.json("allow", "list")
    assert [e["sha256"] for e in allowed] == [hashlib.sha256(EICAR).hexdigest()]
    assert allowed[0]["reason"] == f"restored from quarantine {qa}"

    put(src / "b", b"someone else's file")
    code, _, err = cli("quarantine", "restore", qb)
    assert code == 2 and "exists; use --force" in err
    assert (src / "b").read_bytes() == b"someone else's file"
    code, out, _ = cli("quarantine", "restore", qb, "--force")
    assert code == 0 and out.startswith(f"restored {qb} to {src / 'b'}")
    assert (src / "b").read_bytes() == EICAR + b"b"

    put(src / "c")
    qc = quarantine(state, src / "c")
    assert cli.json("quarantine", "delete", qc) == {"id": qc, "deleted": True}
    assert cli.json("quarantine", "list") == []
    assert not (src / "c").exists() and os.listdir(state / "quarantine") == []


def test_quarantine_purge(cli: Cli, src: Path, state: Path) -> None:
    put(src / "old")
    put(src / "new", EICAR + b"new")
    old, new = quarantine(state, src / "old"), quarantine(state, src / "new")
    Store(state / "verdicts.db").table("quarantine").update(old, {"quarantined_at": time.time() - 40 * 86400})
    assert cli.json("quarantine", "purge", "--older-than", "30") == {"purged": 1, "older_than_days": 30.0}
    assert [i["id"] for i in cli.json("quarantine", "list")] == [new]
    code, out, _ = cli("quarantine", "purge", "--older-than", "30")
    assert code == 0 and out.strip() == "purged 0 quarantined files older than 30 days"
    with pytest.raises(SystemExit):
        cli("quarantine", "purge", "--older-than", "-1")
    with pytest.raises(SystemExit):
        cli("quarantine", "purge")


def test_allow_add_list_remove(cli: Cli, tmp_path: Path) -> None:
    f = tmp_path / "tool"
    f.write_bytes(b"#!/bin/sh\necho hi\n")
    digest = hashlib.sha256(f.read_bytes()).hexdigest()
    added = cli.json("allow", "add", str(f), "--reason", "our deploy script")
    assert added == {"sha256": digest, "path": str(f), "reason": "our deploy script"}
    other = "AB" * 32
    code, out, _ = cli("allow", "add", "--sha256", other)
    assert code == 0 and out.strip() == f"allowed {other.lower()}"

    store = Store(cli.state / "verdicts.db")
    assert store.allowed(digest) and store.allowed(other)
    listed = cli.json("allow", "list")
    assert [(e["sha256"], e["reason"]) for e in listed] == [(digest, "our deploy script"),
                                                           (other.lower(), "added by admin")]
    code, out, _ = cli("allow", "list")
    lines = out.splitlines()
    assert lines[0].split() == ["SHA256", "ADDED", "REASON", "PATH"] and len(lines) == 3
    assert lines[1].startswith(digest) and lines[1].endswith(str(f))

    assert cli.json("allow", "remove", other) == {"sha256": other.lower(), "removed": True}
    assert not store.allowed(other)
    code, _, err = cli("allow", "remove", other)
    assert code == 2 and "not in the allow-list" in err

    for argv, message in [
        (("allow", "add"), "either a PATH or --sha256"),
        (("allow", "add", str(f), "--sha256", other), "either a PATH or --sha256"),
        (("allow", "add", "--sha256", "xyz"), "is not a sha256"),
        (("allow", "add", str(tmp_path / "missing")), "cannot open"),
        (("allow", "add", str(tmp_path)), "not a regular file"),
        (("allow", "remove", "12"), "is not a sha256"),
    ]:
        code, _, err = cli(*argv)
        assert code == 2 and message in err, (argv, err)
    assert [e["sha256"] for e in cli.json("allow", "list")] == [digest]


def test_events_newest_first_with_filters(cli: Cli, state: Path) -> None:
    store = Store(state / "verdicts.db")
    now = time.time()
    store.add_event("exec", "dangerous", "denied", path=b"/tmp/old", pid=1, rules=("EICAR",), at=now - 3 * 86400)
    store.add_event("open", "safe", "allowed", path=b"/tmp/ok", pid=2, at=now - 7200)
    store.add_event("kernel-exec", "dangerous", "denied", path=b"/tmp/new-\xff", pid=3, rules=("X",), at=now - 60)
    store.add_event("write", "dangerous", "quarantined", path=b"/tmp/mid", pid=4, at=now - 1800)

    assert [e["pid"] for e in cli.json("events")] == [3, 4, 2, 1]
    assert [e["pid"] for e in cli.json("events", "--verdict", "dangerous")] == [3, 4, 1]
    assert [e["pid"] for e in cli.json("events", "--since", "1h")] == [3, 4]
    assert [e["pid"] for e in cli.json("events", "--since", "1h", "--verdict", "safe")] == []
    assert [e["pid"] for e in cli.json("events", "--limit", "2")] == [3, 4]
    iso = datetime.fromtimestamp(now - 86400).isoformat(timespec="seconds")
    assert [e["pid"] for e in cli.json("events", "--since", iso)] == [3, 4, 2]
    assert os.fsencode(cli.json("events", "--limit", "1")[0]["path"]) == b"/tmp/new-\xff"

    code, out, _ = cli("events", "--verdict", "dangerous")
    lines = out.splitlines()
    assert lines[0].split() == ["TIME", "KIND", "VERDICT", "ACTION", "PID", "RULES", "PATH"]
    assert [line.split()[1] for line in lines[1:]] == ["kernel-exec", "write", "exec"]
    assert lines[1].endswith("/tmp/new-\\xff")
    col = lines[0].index("ACTION")
    assert [line[col:].split()[0] for line in lines[1:]] == ["denied", "quarantined", "denied"]

    for bad in (["--since", "yesterday"], ["--limit", "0"], ["--verdict", "maybe"]):
        with pytest.raises(SystemExit):
            cli("events", *bad)


def test_parse_since() -> None:
    assert parse_since("90m", now=10_000.0) == 10_000.0 - 5400
    assert parse_since("2d", now=200_000.0) == 200_000.0 - 172800
    assert parse_since("1w", now=1e6) == 1e6 - 604800
    assert parse_since("2026-11-22T10:00:00+00:00") == datetime.fromisoformat("2026-11-22T10:00:00+00:00").timestamp()
    with pytest.raises(argparse.ArgumentTypeError):
        parse_since("soon")

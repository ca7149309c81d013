"""The `onaccess` command: argument parsing and output only.

Every command calls the modules that own the work (daemon, engine, store, control, bpf,
fanotify, quarantine via cli_threats) and prints either for people or, with --json, for programs.
Exit codes follow clamscan: 0 clean/ok, 1 something found, 2 error.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from . import __version__, cli_threats, config as config_mod
from .cliutil import EXIT_ERROR, EXIT_FOUND, EXIT_OK, CliError, common_options, emit, load_config


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return EXIT_ERROR
    if args.func is not cmd_run:
        from . import log

        log.setup("warning")  # log lines go to stderr, never into --json output
    try:
        return int(args.func(args))
    except CliError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error": str(exc)}))
        else:
            print(f"onaccess: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    common = common_options()
    parser = argparse.ArgumentParser(
        prog="onaccess",
        description="On-access malware scanner: fanotify permission events + YARA, with a BPF LSM fast path.",
        epilog="Config: /etc/onaccess/onaccess.toml. State (DB, quarantine, control socket): /var/lib/onaccess. "
        "Exit status: 0 ok/clean, 1 threat found, 2 error.",
    )
    parser.add_argument("--version", action="version", version=f"onaccess {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND")

    p = sub.add_parser("run", parents=[common], help="run the daemon in the foreground")
    p.add_argument("--watch", action="append", type=Path, metavar="PATH",
                   help="directory to protect (repeatable; replaces the config's watch list)")
    p.add_argument("--engine", choices=("yara", "boreal"), help="scan backend")
    p.add_argument("--bpf", choices=("auto", "off", "require"), help="BPF LSM fast path")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("scan", parents=[common], help="scan files or directories now (recursive)")
    p.add_argument("paths", nargs="+", type=os.fsencode, metavar="PATH")
    p.add_argument("--rules", action="append", type=Path, metavar="DIR",
                   help="rule file or directory to use instead of the configured rules (repeatable)")
    p.add_argument("--engine", choices=("yara", "boreal"))
    p.add_argument("--quarantine", action="store_true", help="move detected files to quarantine")
    p.add_argument("--quiet", action="store_true", help="print detections and errors only")
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("status", parents=[common], help="state of the running daemon")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("doctor", parents=[common], help="what this kernel offers, with advice")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("verdict", parents=[common], help="what the DB and the kernel know about a file")
    p.add_argument("path", type=os.fsencode)
    p.set_defaults(func=cmd_verdict)

    p = sub.add_parser("rules", help="list, check or reload rules")
    rsub = p.add_subparsers(metavar="ACTION", required=True)
    r = rsub.add_parser("list", parents=[common], help="rules the daemon would load")
    r.add_argument("--engine", choices=("yara", "boreal"))
    r.set_defaults(func=cmd_rules_list)
    r = rsub.add_parser("check", parents=[common], help="compile rule files/dirs; report file:line errors")
    r.add_argument("paths", nargs="*", type=Path, metavar="DIR", help="default: the configured rules")
    r.add_argument("--engine", choices=("yara", "boreal"))
    r.set_defaults(func=cmd_rules_check)
    r = rsub.add_parser("reload", parents=[common], help="make the running daemon recompile its rules")
    r.set_defaults(func=cmd_rules_reload)

    p = sub.add_parser("unload", parents=[common],
                       help="remove the pinned BPF programs and maps (in-kernel enforcement stops)")
    p.set_defaults(func=cmd_unload)

    cli_threats.register(sub, [common])
    return parser


# --- run ------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from . import daemon, log

    cfg = load_config(args, watch=args.watch, engine=args.engine, bpf=args.bpf, log_level=args.log_level)
    if os.geteuid() != 0:
        raise CliError("the daemon needs root (fanotify permission events need CAP_SYS_ADMIN)")
    log.setup(cfg.log_level, cfg.log_file)
    return daemon.run(cfg)


# --- scan -----------------------------------------------------------------------------------
def _walk(paths: list[bytes], errors: list[tuple[bytes, str]]) -> Iterator[bytes]:
    for top in paths:
        try:
            st = os.lstat(top)
        except OSError as exc:
            errors.append((top, exc.strerror or str(exc)))
            continue
        if stat.S_ISDIR(st.st_mode):
            for dirpath, _dirs, files in os.walk(top, onerror=lambda e: errors.append(
                    (os.fsencode(e.filename or b""), e.strerror or str(e)))):
                for name in sorted(files):
                    yield os.path.join(dirpath, name)
        else:
            yield top


def cmd_scan(args: argparse.Namespace) -> int:
    from . import engine

    cfg = load_config(args, engine=args.engine)
    rule_paths = args.rules or cfg.rule_paths()
    try:
        rules = engine.compile_rules(rule_paths, cfg.engine)
    except engine.RuleError as exc:
        raise CliError(f"rules do not compile:\n{exc}") from exc
    quarantine = None
    if args.quarantine:
        from .quarantine import Quarantine

        quarantine = Quarantine(cfg.db_path, cfg.quarantine_dir)
    errors: list[tuple[bytes, str]] = []
    found: list[dict[str, Any]] = []
    skipped: list[tuple[bytes, str]] = []
    scanned = 0
    tty = sys.stderr.isatty() and not args.json
    for path in _walk(args.paths, errors):
        try:
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                if not stat.S_ISLNK(st.st_mode):
                    skipped.append((path, "not a regular file"))
                continue
            if st.st_size > cfg.max_file_size:
                skipped.append((path, f"larger than max_file_size ({cfg.max_file_size} bytes)"))
                continue
            result = rules.match_path(path, timeout=60)
        except (OSError, engine.ScanError) as exc:
            errors.append((path, getattr(exc, "strerror", None) or str(exc)))
            continue
        scanned += 1
        if tty:
            print(f"\rscanned {scanned} files, {len(found)} found", end="", file=sys.stderr, flush=True)
        if result.dangerous:
            entry: dict[str, Any] = {"path": os.fsdecode(path), "rules": list(result.rule_names)}
            if quarantine is not None:
                try:
                    entry["quarantine_id"] = quarantine.quarantine_path(path, list(result.rule_names)).id
                except Exception as exc:
                    errors.append((path, f"quarantine failed: {exc}"))
            found.append(entry)
            _record_detection(cfg, path, result.rule_names, entry.get("quarantine_id"))
    if tty:
        print(file=sys.stderr)
    summary = {
        "scanned": scanned,
        "found": found,
        "errors": [{"path": os.fsdecode(p), "error": e} for p, e in errors],
        "skipped": [{"path": os.fsdecode(p), "reason": r} for p, r in skipped],
    }

    def human() -> None:
        for f in found:
            q = f" (quarantined as {f['quarantine_id']})" if "quarantine_id" in f else ""
            print(f"{f['path']}: {', '.join(f['rules'])} FOUND{q}")
        for p, e in errors:
            print(f"{os.fsdecode(p)}: ERROR: {e}", file=sys.stderr)
        if not args.quiet:
            for p, r in skipped:
                print(f"{os.fsdecode(p)}: skipped: {r}")
            print(f"----------- SCAN SUMMARY -----------\nScanned files: {scanned}\n"
                  f"Infected files: {len(found)}\nErrors: {len(errors)}")

    emit(args, summary, human)
    if found:
        return EXIT_FOUND
    return EXIT_ERROR if errors else EXIT_OK


def _record_detection(cfg: config_mod.Config, path: bytes, rules: tuple[str, ...], qid: str | None) -> None:
    """History for `onaccess events`; an unwritable state dir must not fail the scan itself."""
    from .store import Store, StoreError

    try:
        store = Store(cfg.db_path)
    except (StoreError, OSError):
        return
    try:
        store.add_event("on-demand", "dangerous", "quarantined" if qid else "detected", path=path,
                        pid=os.getpid(), uid=os.getuid(), rules=rules, detail=qid)
    finally:
        store.close()


# --- status / verdict -----------------------------------------------------------------------
def _ask(cfg: config_mod.Config, cmd: str, **kw: Any) -> dict[str, Any]:
    from .control import ControlError, request

    try:
        answer = request(cfg.socket_path, cmd, **kw)
    except ControlError as exc:
        raise CliError(str(exc)) from exc
    if not answer.get("ok", False):
        raise CliError(answer.get("error", "the daemon refused"))
    return answer


def cmd_status(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    s = _ask(cfg, "status")

    def human() -> None:
        mode = s["mode"] + (f" ({s['mode_reason']})" if s.get("mode_reason") else "")
        lat = s["latency"]
        print(f"onaccess daemon pid {s['pid']}, up {s['uptime_s']} s")
        print(f"mode:       {mode}")
        print(f"watching:   {', '.join(s['watch'])}")
        print(f"rules:      {s['rules']} rules, generation {s['rules_generation']}, engine {s['engine']}")
        print(f"latency:    p50 {lat['p50_us']} µs, p99 {lat['p99_us']} µs")
        for key in ("perm_events", "scans", "cache_hits", "denials", "timeouts", "scan_errors", "joined_scans",
                    "background_scans", "kernel_blocks", "quarantined", "queue_overflows"):
            print(f"{key + ':':<22}{s[key]}")

    emit(args, s, human)
    return EXIT_OK


def cmd_verdict(args: argparse.Namespace) -> int:
    from .store import Store, StoreError
    from .verdicts import Identity

    cfg = load_config(args)
    try:
        # O_PATH: looking at a file must not open it (no permission event, no scan).
        fd = os.open(args.path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise CliError(f"{os.fsdecode(args.path)}: {exc.strerror}") from exc
    identity = Identity.from_stat(st)
    try:
        store = Store(cfg.db_path)
    except StoreError as exc:
        raise CliError(str(exc)) from exc
    try:
        row = store.verdict_row(st.st_dev, st.st_ino)
        generation = int(store.meta_get("rules_generation") or 0)
        current = store.lookup(identity, generation)
    finally:
        store.close()
    out: dict[str, Any] = {"path": os.fsdecode(args.path), "dev": st.st_dev, "ino": st.st_ino,
                           "rules_generation": generation}
    if row is None:
        out["db"] = None
    else:
        out["db"] = {"verdict": row["verdict"], "rules": json.loads(row["rules"]), "generation": row["generation"],
                     "scanned_at": row["scanned_at"], "sha256": row["sha256"], "valid": current is not None}
    try:
        from .control import ControlError, request

        answer = request(cfg.socket_path, "kernel-view", timeout=30, path=os.fsdecode(args.path))
        out["kernel"] = answer.get("kernel") if answer.get("ok") else answer.get("error")
    except ControlError as exc:
        out["kernel"] = str(exc)

    def human() -> None:
        print(out["path"])
        db = out["db"]
        if db is None:
            print("  db:     no verdict (never scanned)")
        else:
            state = "valid" if db["valid"] else "stale (file changed or rules changed since)"
            rules = f" rules={','.join(db['rules'])}" if db["rules"] else ""
            print(f"  db:     {db['verdict'].upper()}{rules} generation={db['generation']} "
                  f"scanned {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(db['scanned_at']))} ({state})")
        k = out["kernel"]
        if isinstance(k, dict):
            print(f"  kernel: {k['verdict'].upper() if k.get('present') else 'no entry'}"
                  + (f" generation={k['generation']}" if k.get("present") else ""))
        else:
            print(f"  kernel: {k or 'no BPF fast path'}")

    emit(args, out, human)
    return EXIT_OK if out["db"] is None or out["db"]["verdict"] == "safe" else EXIT_FOUND


# --- doctor ---------------------------------------------------------------------------------
def cmd_doctor(args: argparse.Namespace) -> int:
    from . import bpf, fanotify
    from .paths import bpf_object

    feats = fanotify.probe()
    kernel = bpf.probe()
    checks: list[dict[str, Any]] = []

    def check(name: str, ok: bool, advice: str) -> None:
        checks.append({"check": name, "ok": ok, "advice": None if ok else advice})

    check("root", os.geteuid() == 0, "run as root: fanotify permission events and BPF need it")
    check("fanotify_permission_events", feats.permission_events,
          f"kernel lacks CONFIG_FANOTIFY_ACCESS_PERMISSIONS or we lack CAP_SYS_ADMIN ({feats.reason})")
    check("fan_mark_ignore", feats.mark_ignore, "kernel < 6.0: falling back to FAN_MARK_IGNORED_MASK")
    check("fan_mark_evictable", feats.mark_evictable,
          "kernel < 5.19: ignore marks pin inodes in memory; keep the watch list small")
    check("fan_report_dfid_name", feats.report_dfid_name,
          "kernel < 5.9: files moved into a watched subdirectory keep stale ignore marks")
    check("btf", bool(kernel.get("btf")), "kernel built without CONFIG_DEBUG_INFO_BTF: no CO-RE, no fast path")
    check("bpf_lsm_active", bool(kernel.get("bpf_lsm")),
          "add 'bpf' to the kernel's lsm= list (e.g. GRUB_CMDLINE_LINUX=\"lsm=...,bpf\") and reboot")
    check("bpf_object", bpf_object().exists(), f"{bpf_object()} missing: rebuild (bpf/build.sh) or reinstall")
    fast = all(c["ok"] for c in checks if c["check"] in ("btf", "bpf_lsm_active", "bpf_object"))
    out = {
        "mode": "bpf+fanotify" if fast and feats.permission_events else
        ("fanotify-only" if feats.permission_events else "unprotected"),
        "checks": checks,
        "kernel": os.uname().release,
        "bpf": kernel,
    }

    def human() -> None:
        print(f"kernel {out['kernel']}: expected mode {out['mode']}")
        for c in checks:
            print(f"  [{'ok' if c['ok'] else '--'}] {c['check']}" + (f": {c['advice']}" if c["advice"] else ""))

    emit(args, out, human)
    return EXIT_OK if feats.permission_events else EXIT_FOUND


# --- rules ----------------------------------------------------------------------------------
def cmd_rules_list(args: argparse.Namespace) -> int:
    from . import engine

    cfg = load_config(args, engine=args.engine)
    try:
        rules = engine.compile_rules(cfg.rule_paths(), cfg.engine)
    except engine.RuleError as exc:
        raise CliError(f"rules do not compile:\n{exc}") from exc
    listing = [{"namespace": ns, "rule": name, "severity": meta.get("severity"),
                "description": meta.get("description")} for ns, name, meta in rules.rules()]

    def human() -> None:
        for r in listing:
            print(f"{r['namespace']}:{r['rule']:<36} {r['severity'] or '-':<9} {r['description'] or ''}")
        print(f"{len(listing)} rules from {', '.join(str(f) for f in rules.files)}")

    emit(args, listing, human)
    return EXIT_OK


def cmd_rules_check(args: argparse.Namespace) -> int:
    from . import engine

    cfg = load_config(args, engine=args.engine)
    paths = args.paths or cfg.rule_paths()
    problems = engine.check_rules(paths, cfg.engine)
    out = {"ok": not problems, "problems": [{"file": p.file, "line": p.line, "message": p.message} for p in problems]}
    emit(args, out, lambda: print("\n".join(str(p) for p in problems) or "rules OK"))
    return EXIT_OK if not problems else EXIT_ERROR


def cmd_rules_reload(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    from .control import ControlError, request

    try:
        answer = request(cfg.socket_path, "reload", timeout=120)
    except ControlError as exc:
        raise CliError(str(exc)) from exc
    if not answer.get("ok"):
        emit(args, answer, lambda: print(f"reload failed, old rules still active:\n{answer.get('error')}",
                                         file=sys.stderr))
        return EXIT_ERROR
    emit(args, answer, f"rules reloaded: {answer['rules']} rules, generation {answer['generation']}"
         + ("" if answer.get("changed") else " (unchanged)"))
    return EXIT_OK


def cmd_unload(args: argparse.Namespace) -> int:
    from . import bpf

    cfg = load_config(args)
    removed = bpf.unload(cfg.bpf_pin_dir)
    emit(args, {"removed": removed, "pin_dir": str(cfg.bpf_pin_dir)},
         f"removed pinned BPF objects from {cfg.bpf_pin_dir}" if removed else "nothing pinned")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

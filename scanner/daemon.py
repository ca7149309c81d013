"""The daemon loop: read fanotify events, decide, answer, then record and act.

Ownership of a permission event's fd, step by step (nothing else may answer or close it):
  1. kernel -> `reader.EventReader` (a thread, the only reader of the group fd): it settles
     what needs no verdict state itself (the daemon's own accesses, opens of empty files,
     CLOSE_WRITE the scan policy skips: answer if needed, close), scans small written
     executables itself (a clean one reaches the loop as a `Prescanned`, fd included, to be
     recorded), and hands every other event, fd included, to the loop in one batch
     (`_deliver`). From then on the fd belongs to the loop.
  2. `_on_permission()` wraps it in a `Pending`; from here `_reply()` is the ONLY function that
     writes a response to the group fd and the only one that closes a permission fd. It runs
     once per `Pending` (the `answered` flag), on every path: verdict known, scan finished,
     deadline timer fired, scan error, exception in the handler, shutdown.
  3. A scan never uses the event's fd: `_start_scan()` takes a dup, owned by the `ScanJob`
     until `_job_done()` (or the action thread it hands the dup to) closes it. The event may be
     answered (deadline) long before its scan ends; the scan still records its verdict, so a
     DANGEROUS result blocks the next access.
  4. Answer first; then LRU, SQLite, the BPF map, the log line, and the action (quarantine,
     hook) - in that order, so a slow disk or log reader can never hold an opener. The one
     thing done before an allow is the ignore mark (a single syscall): see `_reply`.
  CLOSE_WRITE (notification) fds go straight to a background `ScanJob` (or are closed at once).

The daemon's own accesses are allowed before anything else is looked at.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import resource
import signal
import socket
import sqlite3
import stat
import sys
import time
from dataclasses import dataclass
from typing import Any

import structlog

# Everything the daemon may need is imported before any mark is placed (see reader.py).
from . import control, engine, fanotify as fan, hooks
from .quarantine import Quarantine
from .config import Config
from .scheduler import (PRIORITY_BACKGROUND, PRIORITY_PERMISSION, RulesSpec, ScanJob, ScanOutcome, ScanPool,
                        Skipped, WorkerFailure)
from .stats import Stats
from .reader import EventReader, Item, Prescanned, Triage
from .store import Store
from .verdicts import Decision, Identity, Verdict, VerdictCache
from .watches import Watches, Where, fd_path

log = structlog.get_logger()

RECORD_DELAY_S = 0.05  # SAFE verdicts wait at most this long for their SQLite transaction
RECORD_BATCH = 512  # or until this many are waiting


class DaemonError(Exception):
    """Start-up failed; the message is for the admin."""


@dataclass(eq=False)
class Pending:
    fd: int
    pid: int
    kind: str  # exec | open
    arrived: float
    answered: bool = False
    timer: asyncio.TimerHandle | None = None


@dataclass(frozen=True)
class RuleState:
    """The rules in force. The daemon compiles them too (validation, digest, listing); the
    scan workers compile the same files from `spec`."""

    rules: engine.RuleSet
    generation: int
    # Whether this rule set flags a 0-byte file, computed once: every file created with
    # O_CREAT is opened empty first, and the reader thread answers those opens when it does not.
    empty_is_dangerous: bool
    spec: RulesSpec

    @classmethod
    def of(cls, rules: engine.RuleSet, generation: int, backend: str) -> "RuleState":
        spec = RulesSpec(tuple(str(f) for f in rules.files), backend, generation)
        return cls(rules, generation, rules.match_bytes(b"").dangerous, spec)


class Daemon:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.pid = os.getpid()
        self.stats = Stats()
        self.cache = VerdictCache(cfg.cache_size)
        self.pending: set[Pending] = set()
        self.mode = "fanotify-only"
        self.mode_reason = ""
        self.kernel: Any = None  # bpf.KernelVerdicts when the BPF LSM fast path is loaded
        self.started = time.time()
        self._started_ns = time.time_ns()
        self._debug = cfg.log_level == "debug"
        self._stop = asyncio.Event()
        self._closed = False  # shutting down: events still queued on the loop are only closed
        self._allow_hashes: set[str] = set()
        self._allow_version = -1
        self._records: list[tuple[Verdict, bytes | None, str | None]] = []
        self._record_timer: asyncio.TimerHandle | None = None
        self._actions = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="action")
        try:
            self.store = Store(cfg.db_path)
        except Exception as exc:
            raise DaemonError(str(exc)) from exc
        self.state = self._compile_rules()
        # Every start finishes or rolls back half-done moves, whoever left them (daemon or CLI).
        self.quarantine = Quarantine(cfg.db_path, cfg.quarantine_dir)
        self.quarantine.recover()

    # --- rules ----------------------------------------------------------------------------
    def _compile_rules(self) -> RuleState:
        paths = self.cfg.rule_paths()
        try:
            rules = engine.compile_rules(paths, self.cfg.engine)
        except engine.RuleError as exc:
            raise DaemonError(f"rules do not compile:\n{exc}") from exc
        generation = self.store.rules_generation(rules.digest)
        log.info("rules_loaded", files=[str(p) for p in rules.files], rules=rules.rule_count,
                 generation=generation, engine=self.cfg.engine)
        return RuleState.of(rules, generation, self.cfg.engine)

    async def reload(self) -> dict[str, Any]:
        """Compile off the loop; swap atomically; a broken set keeps the old one running."""
        loop = asyncio.get_running_loop()
        try:
            rules = await loop.run_in_executor(None, engine.compile_rules, self.cfg.rule_paths(), self.cfg.engine)
        except engine.RuleError as exc:
            log.error("rules_reload_failed", error=str(exc), generation=self.state.generation)
            return {"ok": False, "error": str(exc), "generation": self.state.generation}
        generation = self.store.rules_generation(rules.digest)
        changed = generation != self.state.generation
        self.state = RuleState.of(rules, generation, self.cfg.engine)
        self.reader.triage = self._triage()
        if changed:
            self.pool.set_rules(self.state.spec)
            # SAFE verdicts of the old generation are void: the kernel must ask again.
            self.watches.flush_ignores()
            if self.kernel is not None:
                self.kernel.set_generation(generation)
                self._seed_kernel()
        log.info("rules_loaded", rules=rules.rule_count, generation=generation, changed=changed, reload=True)
        return {"ok": True, "generation": generation, "changed": changed, "rules": rules.rule_count}

    # --- start / stop ---------------------------------------------------------------------
    async def run(self) -> None:
        _raise_fd_limit()
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.pool = ScanPool(loop, self.state.spec, self.cfg.workers, self.cfg.background_workers,
                             timeout=max(30.0, self.cfg.deadline * 5), max_size=self.cfg.max_file_size)
        try:
            await self.pool.wait_ready()
        except WorkerFailure as exc:
            self.pool.stop()
            raise DaemonError(f"scan workers: {exc}") from exc
        self._start_kernel()
        mask = fan.FAN_OPEN_EXEC_PERM
        if self.cfg.open_perm:
            mask |= fan.FAN_OPEN_PERM
        if self.cfg.close_write_scan != "off":
            mask |= fan.FAN_CLOSE_WRITE
        self.group = self._init_group()
        self.watches = Watches(self.group, mask, self.cfg.watch, [*self.cfg.own_paths(), *self.cfg.exclude_paths])
        try:
            for path in self.watches.mark_all():
                # A default like /home may simply not exist on this machine: protect the rest.
                log.warning("watch_path_missing", path=os.fsdecode(path))
        except OSError as exc:
            os.close(self.group)
            raise DaemonError(f"cannot watch: {exc}") from exc
        self.reader = EventReader(self.group, loop, self._deliver, self._own_pids, self._triage(), self.watches)
        self.reader.start()
        if self.watches.rename_group is not None:
            loop.add_reader(self.watches.rename_group, self._on_renames)
        self.control = await control.serve(self.cfg.socket_path, self)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        log.info("daemon_ready", pid=self.pid, mode=self.mode, mode_reason=self.mode_reason,
                 watch=[str(p) for p in self.cfg.watch], generation=self.state.generation)
        print(f"onaccess ready pid={self.pid} mode={self.mode} watch={','.join(map(str, self.cfg.watch))}",
              flush=True)
        _sd_notify(b"READY=1")
        try:
            await self._stop.wait()
        finally:
            await self._shutdown()

    def _init_group(self) -> int:
        flags = fan.FAN_CLASS_CONTENT | fan.FAN_CLOEXEC | fan.FAN_NONBLOCK
        self.audit = self.cfg.audit
        if self.audit:
            try:
                return fan.init(flags | fan.FAN_ENABLE_AUDIT)
            except fan.FanotifyError as exc:
                # Needs CAP_AUDIT_WRITE: say so once and protect without audit records.
                log.warning("audit_unavailable", error=str(exc))
                self.audit = False
        try:
            return fan.init(flags)
        except fan.FanotifyError as exc:
            raise DaemonError(f"fanotify permission events unavailable: {exc}") from exc

    def stop(self) -> None:
        self._stop.set()

    async def _shutdown(self) -> None:
        _sd_notify(b"STOPPING=1")
        self._closed = True
        self.reader.stop()
        if self.watches.rename_group is not None:
            self.loop.remove_reader(self.watches.rename_group)
        # Everyone still waiting is answered now; the kernel would allow them anyway on close.
        for p in list(self.pending):
            self._reply(p, True, "shutdown")
        os.close(self.group)
        self._flush_records()
        self.watches.close()
        self.control.close()
        self.pool.stop()
        self._actions.shutdown(wait=True, cancel_futures=False)
        if self.kernel is not None:
            self.loop.remove_reader(self.kernel.ring_fd())
            self.kernel.close()  # pins stay: enforcement outlives the daemon
        self.store.close()
        log.info("daemon_stopped", pid=self.pid)

    # --- the BPF fast path ----------------------------------------------------------------
    def _start_kernel(self) -> None:
        if self.cfg.bpf == "off":
            self.mode_reason = "bpf = off in config"
            return
        try:
            from . import bpf
            from .paths import bpf_object

            self.kernel = bpf.KernelVerdicts.open(bpf_object(), self.cfg.bpf_pin_dir)
        except Exception as exc:  # bpf.BpfUnavailable, or a broken install: never refuse to protect
            self.mode_reason = str(exc)
            if self.cfg.bpf == "require":
                raise DaemonError(f"BPF LSM fast path required but unavailable: {exc}") from exc
            log.warning("bpf_unavailable", reason=self.mode_reason, mode="fanotify-only")
            return
        self.mode = "bpf+fanotify"
        self.kernel.set_exempt_tgid(self.pid)
        self.kernel.set_generation(self.state.generation)
        seeded = self._seed_kernel()
        log.info("bpf_loaded", reused=self.kernel.reused, map_id=self.kernel.map_id, seeded=seeded)
        self.loop.add_reader(self.kernel.ring_fd(), self._on_kernel_blocks)
        self._on_kernel_blocks()  # blocks made while no daemon was running

    def _seed_kernel(self) -> int:
        """Put every DANGEROUS verdict from SQLite into the map, for files still as they were."""
        seeded = 0
        for verdict, path in list(self.store.dangerous()):
            if not path:
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                log.info("seed_skipped", path=os.fsdecode(path), reason=exc.strerror)
                continue
            try:
                st = os.fstat(fd)
                if Identity.from_stat(st) != verdict.identity:
                    log.info("seed_skipped", path=os.fsdecode(path), reason="identity changed")
                    continue
                self.kernel.put(fd, True, self.state.generation, st.st_ctime_ns)
                seeded += 1
            finally:
                os.close(fd)
        return seeded

    def _on_kernel_blocks(self) -> None:
        for block in self.kernel.consume():
            self.stats.counters.kernel_blocks += 1
            path = self.store.path_of(block.dev, block.ino)
            log.warning("blocked_in_kernel", hook=block.hook, pid=block.pid, tgid=block.tgid, uid=block.uid,
                        comm=block.comm, dev=block.dev, ino=block.ino,
                        path=os.fsdecode(path) if path else None)
            self._db("add_event", self.store.add_event, f"kernel-{block.hook}", "dangerous", "denied", path=path,
                     pid=block.tgid, uid=block.uid, exe=block.comm)

    # --- reading events -------------------------------------------------------------------
    def _triage(self) -> Triage:
        state = self.state
        return Triage(state.empty_is_dangerous, self.cfg.close_write_scan, state.rules, state.generation,
                      self.cfg.inline_scan_max)

    def _own_pids(self) -> frozenset[int]:
        return self.pool.pids | {self.pid}

    def _deliver(self, items: list[Item]) -> None:
        if self._closed:
            # Handed on just before the reader stopped, run after the group was closed (which
            # allowed them all): nothing may write to a closed - maybe reused - fd number.
            for item in items:
                if item.fd >= 0:
                    os.close(item.fd)
            return
        for ev in items:
            if isinstance(ev, Prescanned):
                self._on_prescanned(ev)
            elif ev.is_permission:
                self._on_permission(ev)
            elif ev.overflow:
                self.stats.counters.queue_overflows += 1
                log.warning("queue_overflow", note="CLOSE_WRITE notifications lost; files are scanned on open")
            elif ev.mask & fan.FAN_CLOSE_WRITE:
                self._on_close_write(ev)
            elif ev.fd >= 0:
                os.close(ev.fd)

    def _on_renames(self) -> None:
        try:
            self.stats.counters.ignore_marks_cleared_by_rename += self.watches.drain_renames()
        except OSError as exc:
            log.error("rename_read_failed", error=str(exc))

    # --- permission events ----------------------------------------------------------------
    def _on_permission(self, ev: fan.Event) -> None:
        c = self.stats.counters
        c.perm_events += 1
        kind = "exec" if ev.mask & fan.FAN_OPEN_EXEC_PERM else "open"
        if ev.fd < 0:  # cannot happen for permission events: there is nothing to answer
            return
        p = Pending(ev.fd, ev.pid, kind, time.monotonic())
        self.pending.add(p)
        try:
            if ev.pid == self.pid or ev.pid in self.pool.pids:  # a worker the reader did not know yet
                c.skipped_self += 1
                self._reply(p, True, "self")
                return
            st = os.fstat(ev.fd)
            if not stat.S_ISREG(st.st_mode):
                self._reply(p, True, "not_regular")
                return
            path: bytes | None = None
            if self.watches.needs_path(st.st_dev):
                path = fd_path(ev.fd)
                if self.watches.classify(path) is not Where.WATCHED:
                    c.outside_watch += 1
                    self._reply(p, True, "outside", ignore=True)
                    return
            if self._process_excluded(ev.pid):
                self._reply(p, True, "excluded_process")
                return
            identity = Identity.from_stat(st)
            verdict = self._known(identity)
            if verdict is not None:
                c.cache_hits += 1
                self._answer_known(p, verdict, path)
                return
            job = self.pool.find(identity)
            if job is not None:
                c.joined_scans += 1
                self.pool.promote(job)
            else:
                job = self._start_scan(identity, ev.fd, path, kind, ev.pid, PRIORITY_PERMISSION)
            job.extra.setdefault("waiters", []).append(p)
            p.timer = self.loop.call_at(self.loop.time() + self.cfg.deadline, self._deadline, p, job)
        except Exception as exc:
            c.scan_errors += 1
            self._reply(p, self.cfg.on_error == "allow", "error")
            log.error("event_error", pid=ev.pid, error=repr(exc))

    def _known(self, identity: Identity) -> Verdict | None:
        generation = self.state.generation
        verdict = self.cache.get(identity, generation)
        # A file changed since this daemon started was judged, if at all, by this daemon, and
        # the LRU still has it unless it evicted something: skip SQLite for every fresh file
        # (only the daemon records verdicts; a clock stepped back costs a rescan, no more).
        if verdict is None and (identity.ctime_ns <= self._started_ns or self.cache.evicted):
            verdict = self.store.lookup(identity, generation)
            if verdict is not None:
                self.cache.put(verdict)
        return verdict

    def _answer_known(self, p: Pending, verdict: Verdict, path: bytes | None) -> None:
        fd = p.fd
        if verdict.dangerous:
            # Keep a dup: the reply closes p.fd, and the kernel map wants an fd of the inode.
            keep = os.dup(fd)
            self._reply(p, False, "known_dangerous")
            try:
                if self.kernel is not None:
                    self._kernel_put(keep, verdict)
                self._report_denial(p.kind, p.pid, path or _safe_path(keep), verdict.rules, "known")
            finally:
                os.close(keep)
        else:
            self._reply(p, True, "known_safe", ignore=True, identity=verdict.identity)

    def _deadline(self, p: Pending, job: ScanJob) -> None:
        if p.answered:
            return
        self.stats.counters.timeouts += 1
        allow = self.cfg.on_error == "allow"
        self._reply(p, allow, "deadline")
        log.warning("scan_timeout", pid=p.pid, path=_decode(_job_path(job)), deadline_s=self.cfg.deadline,
                    answer="allow" if allow else "deny", note="scan continues; its verdict is recorded")

    def _reply(self, p: Pending, allow: bool, reason: str, ignore: bool = False,
               identity: Identity | None = None) -> None:
        """THE reply path: one response, then the fd is closed. Idempotent by `answered`.

        `ignore`: also put an ignore mark on the inode (only with allow). It goes on BEFORE the
        response, deliberately: an exec sends FAN_OPEN_EXEC_PERM and then FAN_OPEN_PERM for the
        same open, and a mark placed now spares the second round trip. It is one fanotify_mark
        call, no I/O. `identity` given: the mark is for a SAFE verdict and must not survive a
        write; None: an allow-without-scan (outside the watch) that may.
        """
        if p.answered:
            return
        p.answered = True
        self.pending.discard(p)
        if p.timer is not None:
            p.timer.cancel()
        try:
            if ignore and allow:
                self._ignore(p.fd, survive_writes=identity is None, identity=identity)
            fan.respond(self.group, p.fd, allow, audit=self.audit and not allow)
        except OSError as exc:
            log.error("respond_failed", pid=p.pid, reason=reason, error=str(exc))
        finally:
            os.close(p.fd)
        c = self.stats.counters
        if allow:
            c.allowed += 1
        else:
            c.denials += 1
        self.stats.latency(time.monotonic() - p.arrived)

    def _ignore(self, fd: int, survive_writes: bool, identity: Identity | None = None) -> None:
        """Add an ignore mark; for a SAFE verdict (`identity`) only if the file is still what
        was judged (`Watches.ignore_unchanged`)."""
        try:
            if identity is None:
                self.watches.ignore(fd, survive_writes)
            elif not self.watches.ignore_unchanged(fd, identity):
                return
            self.stats.counters.ignore_marks += 1
        except OSError as exc:
            log.debug("ignore_mark_failed", error=str(exc))

    def _process_excluded(self, pid: int) -> bool:
        cfg = self.cfg
        try:
            if cfg.exclude_uids:
                with open(f"/proc/{pid}/status", "rb") as f:
                    for line in f:
                        if line.startswith(b"Uid:"):
                            if int(line.split()[2]) in cfg.exclude_uids:  # effective uid
                                return True
                            break
            if cfg.exclude_exes:
                exe = os.readlink(f"/proc/{pid}/exe")
                return any(exe == str(e) for e in cfg.exclude_exes)
        except (OSError, ValueError, IndexError):
            return False  # process gone or unreadable: not excluded, scan as usual
        return False

    # --- CLOSE_WRITE ----------------------------------------------------------------------
    def _on_close_write(self, ev: fan.Event) -> None:
        if ev.fd < 0:
            return
        handed_on = False
        try:
            if ev.pid == self.pid or ev.pid in self.pool.pids:
                return
            st = os.fstat(ev.fd)
            if not stat.S_ISREG(st.st_mode):
                return
            path = None
            if self.watches.needs_path(st.st_dev):
                path = fd_path(ev.fd)
                if self.watches.classify(path) is not Where.WATCHED:
                    return
            identity = Identity.from_stat(st)
            if self.pool.find(identity) is not None or self._known(identity) is not None:
                return
            if self.pool.background_backlog() >= self.cfg.background_queue:
                # Bounded: every queued job holds an fd. A dropped file is scanned at its first open.
                self.stats.counters.background_dropped += 1
                return
            self._start_scan(identity, ev.fd, path, "write", ev.pid, PRIORITY_BACKGROUND, owned=True)
            handed_on = True
        except OSError as exc:
            log.debug("close_write_skipped", error=str(exc))
        finally:
            if not handed_on:
                os.close(ev.fd)

    def _on_prescanned(self, item: Prescanned) -> None:
        """A written file the reader scanned clean (and ignore-marked): record it like a scan."""
        try:
            c = self.stats.counters
            c.scans += 1
            c.background_scans += 1
            if item.generation != self.state.generation:
                return  # judged under rules replaced meanwhile (its mark was taken back or flushed)
            c.ignore_marks += item.marked
            self._remember(Verdict(item.identity, Decision.SAFE, item.generation), item.fd, None, None)
        finally:
            os.close(item.fd)

    # --- scanning -------------------------------------------------------------------------
    def _start_scan(self, identity: Identity, fd: int, path: bytes | None, kind: str, pid: int,
                    priority: int, owned: bool = False) -> ScanJob:
        """Queue a scan. The job owns `fd` if `owned`, else a dup of it. `path` may be None:
        `_job_path` looks it up when something needs it (a readlink per clean file adds up)."""
        job_fd = fd if owned else os.dup(fd)
        job = ScanJob(identity, job_fd, path, kind, pid, self.loop.create_future(), priority)
        job.future.add_done_callback(lambda f: self._job_done(job, f))
        self.pool.submit(job)
        return job

    def _refresh_allowlist(self) -> None:
        version = self.store.allowlist_version()
        if version != self._allow_version:
            self._allow_hashes = {row["sha256"] for row in self.store.allow_list()}
            self._allow_version = version

    def _job_done(self, job: ScanJob, fut: asyncio.Future[ScanOutcome]) -> None:
        c = self.stats.counters
        waiters: list[Pending] = job.extra.get("waiters", [])
        fd_handed_on = False
        try:
            try:
                outcome = fut.result()
            except Skipped:
                c.background_skipped += 1
                return
            except engine.ScanError as exc:
                c.scan_errors += 1
                allow = self.cfg.on_error == "allow"
                for p in waiters:
                    self._reply(p, allow, "scan_error")
                log.warning("scan_error", path=_decode(_job_path(job)), kind=job.kind, error=str(exc),
                            answer="allow" if allow else "deny", timeout=isinstance(exc, engine.ScanTimeout))
                return
            except Exception as exc:
                c.scan_errors += 1
                for p in waiters:
                    self._reply(p, self.cfg.on_error == "allow", "scan_error")
                log.error("scan_error", path=_decode(_job_path(job)), kind=job.kind, error=repr(exc))
                return
            c.scans += 1
            if job.priority == PRIORITY_BACKGROUND and not waiters:
                c.background_scans += 1
            if outcome.rules:  # only a match can be overruled by the allow-list: look at it now
                self._refresh_allowlist()
            allowlisted = outcome.sha256 is not None and outcome.sha256 in self._allow_hashes
            decision = Decision.DANGEROUS if outcome.rules and not allowlisted else Decision.SAFE
            verdict = Verdict(job.identity, decision, outcome.generation, () if allowlisted else outcome.rules)
            safe = not verdict.dangerous
            # A verdict from rules replaced meanwhile earns no ignore mark.
            if safe and outcome.generation == self.state.generation:
                # Before the answers, as in _reply: spares an exec's second permission event.
                self._ignore(job.fd, survive_writes=False, identity=job.identity)
            for p in waiters:  # answer first; record, log and act after
                self._reply(p, safe, "scanned")
            # A SAFE row gets the path only if it is at hand: nothing reads it back (seeding the
            # kernel and naming kernel blocks use DANGEROUS rows), and a readlink per clean file
            # is a tenth of its cost.
            self._remember(verdict, job.fd, job.path if safe else _job_path(job), outcome.sha256)
            if safe:
                # debug only: a SAFE verdict per file is noise for a SIEM (and costs the loop time,
                # so its arguments are not even built otherwise).
                if self._debug:
                    log.debug("scan_verdict", verdict="safe", path=_decode(_job_path(job)), kind=job.kind,
                              pid=job.pid, allowlisted=allowlisted, waiters=len(waiters))
                return
            action = self.cfg.actions.get(job.kind, "none")
            log.warning("scan_verdict", verdict="dangerous", path=_decode(job.path), kind=job.kind, pid=job.pid,
                        rules=list(outcome.rules), waiters=len(waiters), action=action)
            self._report_denial(job.kind, job.pid, job.path, outcome.rules, "scanned" if waiters else "detected")
            if action == "quarantine" or self.cfg.on_detect:
                self._actions.submit(self._act, job.fd, job.path, outcome.rules, job.kind, job.pid, action)
                fd_handed_on = True
        finally:
            if not fd_handed_on:
                os.close(job.fd)

    def _remember(self, verdict: Verdict, fd: int, path: bytes | None, sha256: str | None) -> None:
        """A new verdict, after its answers: the LRU, SQLite (batched) and the BPF map."""
        self.cache.put(verdict)
        self._queue_record(verdict, path, sha256)
        if self.kernel is not None:
            self._kernel_put(fd, verdict)

    def _queue_record(self, verdict: Verdict, path: bytes | None, sha256: str | None) -> None:
        """Verdicts go to SQLite in batches: one transaction per RECORD_DELAY_S of SAFE verdicts
        (a commit per file cost more loop time than the rest of the event); a DANGEROUS verdict
        flushes the batch right after this loop iteration.

        The LRU answers meanwhile; a SIGKILL loses at most RECORD_DELAY_S of SAFE verdicts (they
        are rescanned), never a DANGEROUS one's denial, which the kernel already has.
        """
        self._records.append((verdict, path, sha256))
        if verdict.dangerous or len(self._records) >= RECORD_BATCH:
            self.loop.call_soon(self._flush_records)
        elif self._record_timer is None:
            self._record_timer = self.loop.call_later(RECORD_DELAY_S, self._flush_records)

    def _flush_records(self) -> None:
        if self._record_timer is not None:
            self._record_timer.cancel()
            self._record_timer = None
        records, self._records = self._records, []
        if records:
            self._db("record", self.store.record_many, records)

    def _kernel_put(self, fd: int, verdict: Verdict) -> None:
        try:
            self.kernel.put(fd, verdict.dangerous, self.state.generation, verdict.identity.ctime_ns)
        except OSError as exc:
            log.warning("bpf_map_update_failed", error=str(exc))

    def _report_denial(self, kind: str, pid: int, path: bytes | None, rules: tuple[str, ...], how: str) -> None:
        exe = _exe_of(pid)
        log.warning("access_denied", kind=kind, pid=pid, exe=exe, path=_decode(path), rules=list(rules), how=how)
        self._db("add_event", self.store.add_event, kind, "dangerous", "denied" if how != "detected" else "detected",
                 path=path, pid=pid, uid=_uid_of(pid), exe=exe, rules=rules, detail=how)

    def _db(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        """A DB write after the answer: a full disk or locked DB costs history, never a reply."""
        try:
            fn(*args, **kwargs)
        except sqlite3.Error as exc:
            log.error("db_write_failed", op=what, error=str(exc), db=str(self.cfg.db_path))

    def _act(self, fd: int, path: bytes | None, rules: tuple[str, ...], kind: str, pid: int, action: str) -> None:
        """Action thread: quarantine and the notification hook, after the kernel was answered."""
        result: dict[str, Any] = {"event": kind, "path": _decode(path), "pid": pid, "rules": list(rules),
                                  "verdict": "dangerous", "action": action}
        try:
            if action == "quarantine":
                try:  # the quarantine module logs `quarantined` / `quarantine_failed` itself
                    record = self.quarantine.quarantine_fd(fd, path, rules, kind)
                    result["quarantine_id"] = record.id
                    self.stats.counters.quarantined += 1
                except Exception as exc:
                    result["quarantine_error"] = str(exc)
            if self.cfg.on_detect:
                hooks.run_hook(self.cfg.on_detect, result, self.cfg.on_detect_timeout)
        finally:
            os.close(fd)

    # --- for the control socket -----------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "mode": self.mode,
            "mode_reason": self.mode_reason,
            "watch": [os.fsdecode(p) for p in self.watches.roots],
            "audit": self.audit,
            "engine": self.cfg.engine,
            "rules_generation": self.state.generation,
            "rules": self.state.rules.rule_count,
            "rule_files": [str(p) for p in self.state.rules.files],
            "uptime_s": round(time.time() - self.started, 1),
            "pending": len(self.pending),
            "in_flight_scans": len(self.pool.in_flight),
            "queued_scans": self.pool.queued(),
            "scan_workers": self.pool.workers(),
            "scan_worker_respawns": self.pool.respawns,
            "cache_entries": len(self.cache),
            "bpf_map_id": self.kernel.map_id if self.kernel is not None else None,
            **self._counters(),
        }

    def _counters(self) -> dict[str, Any]:
        """The loop's counters with the reader thread's folded in: one view for the admin."""
        snap = self.stats.snapshot()
        r = self.reader.counters
        snap["perm_events"] += r.answered_empty + r.answered_inline
        snap["allowed"] += r.answered_empty + r.answered_inline
        snap.update(answered_own=r.answered_own, answered_empty=r.answered_empty,
                    close_write_left=r.close_write_left, inline_scans=r.inline_scans,
                    answered_inline=r.answered_inline, inline_disabled=r.inline_disabled)
        return snap

    def kernel_view(self, path: bytes) -> dict[str, Any] | None:
        """What the BPF map holds for a file (None when there is no BPF fast path)."""
        if self.kernel is None:
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            entry = self.kernel.get(fd)
        finally:
            os.close(fd)
        if entry is None:
            return {"present": False}
        verdict, generation, ctime_ns = entry
        return {"present": True, "verdict": {1: "safe", 2: "dangerous"}.get(verdict, "unknown"),
                "generation": generation, "ctime_ns": ctime_ns, "current_generation": self.state.generation}


def _raise_fd_limit() -> None:
    """Every pending event and queued scan holds an fd: take the whole hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _job_path(job: ScanJob) -> bytes | None:
    """The job's path, looked up on first need (the job's fd names the file even once deleted)."""
    if job.path is None:
        job.path = _safe_path(job.fd)
    return job.path


def _safe_path(fd: int) -> bytes | None:
    try:
        return fd_path(fd)
    except OSError:
        return None


def _decode(path: bytes | None) -> str | None:
    return os.fsdecode(path) if path is not None else None


def _exe_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def _uid_of(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _sd_notify(message: bytes) -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(message, address)
    except OSError as exc:
        log.warning("sd_notify_failed", error=str(exc))


def run(cfg: Config) -> int:
    try:
        daemon = Daemon(cfg)
        asyncio.run(daemon.run())
    except DaemonError as exc:
        log.error("daemon_start_failed", error=str(exc))
        print(f"onaccess: {exc}", file=sys.stderr)
        return 2
    return 0


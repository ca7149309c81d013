"""The in-kernel fast path, seen from userspace: a thin ctypes layer over the system libbpf.

Owns: loading bpf/verdict.bpf.o (CO-RE), attaching its LSM programs, pinning links and maps
under /sys/fs/bpf/onaccess so enforcement outlives the daemon, reusing those pins on restart,
writing verdicts into the inode-storage map by file fd, and draining the ring buffer of
kernel denials.
Hands on: the policy (which verdict, which generation) comes from the daemon; KernelBlock
records go back to it for logging as `blocked_in_kernel`. Anything this module cannot do on
the running kernel is reported as BpfUnavailable with a human reason, and the daemon runs
fanotify-only.

Only libbpf 1.1 APIs are used (Debian 12's libbpf1). libbpf 1.x returns -errno from int
functions and NULL + errno from pointer functions; the library is loaded with use_errno=True.

The ctypes structures mirror bpf/verdict.h; tests/test_bpf_build.py compares them with the
BTF of the compiled object so the two cannot drift.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import errno as errno_mod
import fcntl
import functools
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
import structlog

log = structlog.get_logger()

DEFAULT_PIN_DIR = Path("/sys/fs/bpf/onaccess")
BPF_FS_MAGIC = 0xCAFE4A11
LSM_FILE = Path("/sys/kernel/security/lsm")
VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")

VERDICT_UNKNOWN = 0
VERDICT_SAFE = 1
VERDICT_DANGEROUS = 2

HOOKS = {1: "exec", 2: "open", 3: "mmap"}

MAP_VERDICTS = "oa_verdicts"
MAP_CONFIG = "oa_config"
MAP_EVENTS = "oa_events"
MAP_NAMES = (MAP_VERDICTS, MAP_CONFIG, MAP_EVENTS)

BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_RINGBUF = 27
BPF_MAP_TYPE_INODE_STORAGE = 28
BPF_ANY = 0
BTF_KIND_FUNC = 12
_NSEC = 1_000_000_000


class BpfUnavailable(Exception):
    """The fast path cannot run here; str() is the human reason."""


# --- layouts shared with bpf/verdict.h -------------------------------------------------------


class VerdictValue(ctypes.Structure):
    _fields_ = [
        ("verdict", ctypes.c_uint32),
        ("ctime_nsec", ctypes.c_uint32),
        ("ctime_sec", ctypes.c_int64),
        ("generation", ctypes.c_uint64),
    ]


class VerdictConfig(ctypes.Structure):
    _fields_ = [
        ("generation", ctypes.c_uint64),
        ("exempt_tgid", ctypes.c_uint32),
        ("obj_tag", ctypes.c_uint32),
    ]


class BlockEvent(ctypes.Structure):
    _fields_ = [
        ("tgid", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("uid", ctypes.c_uint32),
        ("hook", ctypes.c_uint32),
        ("dev", ctypes.c_uint64),
        ("ino", ctypes.c_uint64),
        ("comm", ctypes.c_char * 16),
    ]


# Name in verdict.h -> ctypes mirror; the host test walks this table.
SHARED_STRUCTS: dict[str, type[ctypes.Structure]] = {
    "verdict_value": VerdictValue,
    "verdict_config": VerdictConfig,
    "block_event": BlockEvent,
}


# --- kernel uapi info structs (prefixes are enough: the kernel copies min(len, its size)) ----


class _MapInfo(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    ]


class _LinkInfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("prog_id", ctypes.c_uint32)]


class _ProgInfo(ctypes.Structure):
    # struct bpf_prog_info up to recursion_misses (linux/bpf.h, 5.12+)
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
        ("ifindex", ctypes.c_uint32),
        ("gpl_compatible", ctypes.c_uint32),
        ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64),
        ("nr_jited_ksyms", ctypes.c_uint32),
        ("nr_jited_func_lens", ctypes.c_uint32),
        ("jited_ksyms", ctypes.c_uint64),
        ("jited_func_lens", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32),
        ("func_info", ctypes.c_uint64),
        ("nr_func_info", ctypes.c_uint32),
        ("nr_line_info", ctypes.c_uint32),
        ("line_info", ctypes.c_uint64),
        ("jited_line_info", ctypes.c_uint64),
        ("nr_jited_line_info", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32),
        ("jited_line_info_rec_size", ctypes.c_uint32),
        ("nr_prog_tags", ctypes.c_uint32),
        ("prog_tags", ctypes.c_uint64),
        ("run_time_ns", ctypes.c_uint64),
        ("run_cnt", ctypes.c_uint64),
        ("recursion_misses", ctypes.c_uint64),
    ]


@dataclass(frozen=True)
class KernelBlock:
    """One denial by the BPF program, as read from the ring buffer."""

    tgid: int
    pid: int
    uid: int
    comm: str
    dev: int  # userspace st_dev encoding (os.makedev), comparable with os.stat().st_dev
    ino: int
    hook: str  # "exec" | "open" | "mmap"

    @classmethod
    def from_record(cls, raw: bytes) -> "KernelBlock":
        ev = BlockEvent.from_buffer_copy(raw[: ctypes.sizeof(BlockEvent)])
        kdev = ev.dev  # kernel dev_t: major << 20 | minor
        return cls(
            tgid=ev.tgid,
            pid=ev.pid,
            uid=ev.uid,
            comm=ev.comm.decode("utf-8", "replace"),
            dev=os.makedev(kdev >> 20, kdev & 0xFFFFF),
            ino=ev.ino,
            hook=HOOKS.get(ev.hook, f"hook{ev.hook}"),
        )


# --- libbpf binding ---------------------------------------------------------------------------

_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)

_lib: ctypes.CDLL | None = None
_libc = ctypes.CDLL(None, use_errno=True)
_libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
_libc.vsnprintf.restype = ctypes.c_int
# libbpf's last warnings: the verifier's or loader's own words go into BpfUnavailable reasons.
_recent_warnings: collections.deque[str] = collections.deque(maxlen=8)


def _libbpf_print(level: int, fmt: bytes, args: int) -> int:
    if level >= 2:  # LIBBPF_DEBUG: hundreds of lines per load, never useful in production
        return 0
    buf = ctypes.create_string_buffer(2048)
    _libc.vsnprintf(buf, len(buf), fmt, args)
    msg = buf.value.decode("utf-8", "replace").rstrip()
    if level == 0:  # LIBBPF_WARN
        _recent_warnings.append(msg)
    log.debug("libbpf", level=("warn", "info")[level], msg=msg)
    return 0


_print_cb = _PRINT_FN(_libbpf_print)  # kept referenced for the life of the process

_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "libbpf_set_print": (ctypes.c_void_p, [_PRINT_FN]),
    "bpf_object__open_file": (ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_void_p]),
    "bpf_object__load": (ctypes.c_int, [ctypes.c_void_p]),
    "bpf_object__close": (None, [ctypes.c_void_p]),
    "bpf_object__next_program": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_void_p]),
    "bpf_object__next_map": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_void_p]),
    "bpf_program__name": (ctypes.c_char_p, [ctypes.c_void_p]),
    "bpf_program__section_name": (ctypes.c_char_p, [ctypes.c_void_p]),
    "bpf_program__set_autoload": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_bool]),
    "bpf_program__autoload": (ctypes.c_bool, [ctypes.c_void_p]),
    "bpf_program__attach": (ctypes.c_void_p, [ctypes.c_void_p]),
    "bpf_link__pin": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p]),
    "bpf_link__destroy": (ctypes.c_int, [ctypes.c_void_p]),
    "bpf_map__name": (ctypes.c_char_p, [ctypes.c_void_p]),
    "bpf_map__fd": (ctypes.c_int, [ctypes.c_void_p]),
    "bpf_map__pin": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p]),
    "bpf_map__reuse_fd": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]),
    "bpf_obj_get": (ctypes.c_int, [ctypes.c_char_p]),
    "bpf_obj_get_info_by_fd": (
        ctypes.c_int,
        [ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)],
    ),
    "bpf_prog_get_fd_by_id": (ctypes.c_int, [ctypes.c_uint32]),
    "bpf_map_update_elem": (
        ctypes.c_int,
        [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64],
    ),
    "bpf_map_lookup_elem": (ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]),
    "bpf_map_delete_elem": (ctypes.c_int, [ctypes.c_int, ctypes.c_void_p]),
    "ring_buffer__new": (
        ctypes.c_void_p,
        [ctypes.c_int, _SAMPLE_FN, ctypes.c_void_p, ctypes.c_void_p],
    ),
    "ring_buffer__consume": (ctypes.c_int, [ctypes.c_void_p]),
    "ring_buffer__epoll_fd": (ctypes.c_int, [ctypes.c_void_p]),
    "ring_buffer__free": (None, [ctypes.c_void_p]),
    "btf__load_vmlinux_btf": (ctypes.c_void_p, []),
    "btf__find_by_name_kind": (ctypes.c_int32, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32]),
    "btf__free": (None, [ctypes.c_void_p]),
    "libbpf_probe_bpf_map_type": (ctypes.c_int, [ctypes.c_int, ctypes.c_void_p]),
}


def libbpf() -> ctypes.CDLL:
    """The system libbpf, typed; raises BpfUnavailable if it is not installed."""
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("bpf") or "libbpf.so.1"
        try:
            lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
        except OSError:
            try:
                lib = ctypes.CDLL(name, use_errno=True)
            except OSError as exc:
                raise BpfUnavailable(f"libbpf not found ({exc}); install libbpf1") from exc
        for fn, (restype, argtypes) in _SIGNATURES.items():
            f = getattr(lib, fn)
            f.restype = restype
            f.argtypes = argtypes
        lib.libbpf_set_print(_print_cb)
        _lib = lib
    return _lib


def _errname(err: int) -> str:
    return errno_mod.errorcode.get(err, str(err))


def _check(rc: int, what: str) -> int:
    """libbpf int convention: >= 0 ok, -errno on failure."""
    if rc < 0:
        err = -rc if rc != -1 else (ctypes.get_errno() or errno_mod.EIO)
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


def _check_ptr(ptr: int | None, what: str) -> int:
    if not ptr:
        err = ctypes.get_errno() or errno_mod.EIO
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ptr


def _obj_info(fd: int, info: ctypes.Structure, what: str) -> None:
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(libbpf().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), what)


def _map_info(fd: int) -> _MapInfo:
    info = _MapInfo()
    _obj_info(fd, info, "map info")
    return info


@functools.lru_cache(maxsize=4)
def _kernel_hooks(hooks: tuple[str, ...]) -> dict[str, bool]:
    """Which LSM hooks the running kernel has (bpf_lsm_<hook> in vmlinux BTF)."""
    lib = libbpf()
    btf = lib.btf__load_vmlinux_btf()
    if not btf:
        raise BpfUnavailable(f"kernel BTF not available ({VMLINUX_BTF}): CO-RE needs CONFIG_DEBUG_INFO_BTF")
    try:
        return {
            h: lib.btf__find_by_name_kind(btf, f"bpf_lsm_{h}".encode(), BTF_KIND_FUNC) > 0
            for h in hooks
        }
    finally:
        lib.btf__free(btf)


class _Statfs(ctypes.Structure):
    # struct statfs starts with f_type; the rest is room for the remaining fields.
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 120)]


def _on_bpffs(path: Path) -> bool:
    st = _Statfs()
    if _libc.statfs(os.fsencode(path), ctypes.byref(st)) != 0:
        return False
    return (st.f_type & 0xFFFFFFFF) == BPF_FS_MAGIC


def _lsm_list() -> list[str] | None:
    try:
        return LSM_FILE.read_text().strip().split(",")
    except OSError:
        return None


# --- the object's programs, read once per object file ----------------------------------------


@dataclass(frozen=True)
class _Prog:
    name: str  # C function name, e.g. oa_exec
    hook: str  # LSM hook, e.g. bprm_check_security

    @property
    def link_pin(self) -> str:
        return f"link_{self.name}"


def object_programs(obj_path: Path) -> list[_Prog]:
    """The LSM programs in the object (libbpf open without load: no privileges needed)."""
    lib = libbpf()
    obj = lib.bpf_object__open_file(os.fsencode(obj_path), None)
    if not obj:
        err = ctypes.get_errno()
        raise BpfUnavailable(f"cannot open BPF object {obj_path}: {os.strerror(err)}")
    try:
        return list(_iter_progs(obj))
    finally:
        lib.bpf_object__close(obj)


def object_maps(obj_path: Path) -> list[str]:
    lib = libbpf()
    obj = _check_ptr(lib.bpf_object__open_file(os.fsencode(obj_path), None), f"open {obj_path}")
    try:
        names = []
        m = lib.bpf_object__next_map(obj, None)
        while m:
            names.append(lib.bpf_map__name(m).decode())
            m = lib.bpf_object__next_map(obj, m)
        return names
    finally:
        lib.bpf_object__close(obj)


def _iter_progs(obj: int):
    lib = libbpf()
    p = lib.bpf_object__next_program(obj, None)
    while p:
        sec = lib.bpf_program__section_name(p).decode()
        if sec.startswith("lsm/"):
            yield _Prog(lib.bpf_program__name(p).decode(), sec[4:])
        p = lib.bpf_object__next_program(obj, p)


# --- the public handle ------------------------------------------------------------------------


class KernelVerdicts:
    """Verdicts in the kernel: map writes by fd, ring-buffer drain. Pins outlive this object."""

    def __init__(
        self, pin_dir: Path, fds: dict[str, int], reused: bool, programs: list[_Prog],
        upgraded: bool = False,
    ):
        self.pin_dir = pin_dir
        self.reused = reused  # the pinned maps (and their verdicts) were kept
        self.upgraded = upgraded  # ... but the programs were replaced by this object's build
        self._fds = fds
        self.programs = programs  # the programs attached on this kernel
        self.map_id: int = _map_info(fds[MAP_VERDICTS]).id
        self._pending: list[bytes] = []
        self._sample_cb = _SAMPLE_FN(self._on_sample)  # referenced while the ring buffer lives
        self._rb = _check_ptr(
            libbpf().ring_buffer__new(fds[MAP_EVENTS], self._sample_cb, None, None),
            "ring_buffer__new",
        )

    # -- construction

    @classmethod
    def open(cls, obj_path: Path, pin_dir: Path = DEFAULT_PIN_DIR) -> "KernelVerdicts":
        """Reuse the pinned maps and links in pin_dir, or load, attach and pin the object."""
        pin_dir = Path(pin_dir)
        lsms = _lsm_list()
        if lsms is not None and "bpf" not in lsms:
            raise BpfUnavailable(
                f"BPF LSM not active: 'bpf' missing from {LSM_FILE} ({','.join(lsms)});"
                " boot with lsm=...,bpf"
            )
        libbpf()
        if not _on_bpffs(pin_dir.parent):
            raise BpfUnavailable(f"bpffs not mounted at {pin_dir.parent} (mount -t bpf bpf {pin_dir.parent})")
        if not Path(obj_path).is_file():
            raise BpfUnavailable(f"BPF object missing: {obj_path} (run bpf/build.sh)")
        progs = object_programs(Path(obj_path))
        present = _kernel_hooks(tuple(p.hook for p in progs))
        wanted = [p for p in progs if present[p.hook]]
        for p in progs:
            if not present[p.hook]:
                log.info("bpf_hook_skipped", hook=p.hook, reason="kernel has no such LSM hook")

        try:
            os.mkdir(pin_dir, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise BpfUnavailable(f"cannot create {pin_dir}: {exc.strerror}") from exc
        tag = _obj_tag(Path(obj_path))
        lock = os.open(pin_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            # Two daemons starting at once must not both load a copy.
            fcntl.flock(lock, fcntl.LOCK_EX)
            return cls._open_locked(Path(obj_path), pin_dir, wanted, tag)
        finally:
            os.close(lock)

    @classmethod
    def _open_locked(cls, obj_path: Path, pin_dir: Path, wanted: list[_Prog], tag: int) -> "KernelVerdicts":
        fds = _reuse_pins(pin_dir, wanted)
        if fds is not None:
            try:
                pinned_tag = _read_config(fds[MAP_CONFIG]).obj_tag
            except OSError:
                pinned_tag = -1
            if pinned_tag == tag:
                log.info("bpf_pins_reused", pin_dir=str(pin_dir))
                return cls(pin_dir, fds, True, wanted)
            # Another build is pinned: swap its programs for ours, keep maps and verdicts.
            # On failure the old programs stay attached and enforcing.
            try:
                new_fds = _load_and_pin(obj_path, pin_dir, wanted, reuse=fds)
            finally:
                for fd in fds.values():
                    os.close(fd)
            _write_obj_tag(new_fds[MAP_CONFIG], tag)
            log.info("bpf_programs_upgraded", pin_dir=str(pin_dir), old_tag=pinned_tag, new_tag=tag)
            return cls(pin_dir, new_fds, True, wanted, upgraded=True)
        if any(pin_dir.iterdir()):
            log.warning("bpf_pins_broken", pin_dir=str(pin_dir), action="reload")
            _remove_pins(pin_dir, keep_dir=True)
        try:
            fds = _load_and_pin(obj_path, pin_dir, wanted)
            _write_obj_tag(fds[MAP_CONFIG], tag)
        except (BpfUnavailable, OSError) as exc:
            _remove_pins(pin_dir, keep_dir=False)
            if isinstance(exc, BpfUnavailable):
                raise
            raise BpfUnavailable(f"setting up {pin_dir} failed: {exc}") from exc
        log.info("bpf_loaded", pin_dir=str(pin_dir), programs=[p.hook for p in wanted])
        return cls(pin_dir, fds, False, wanted)

    # -- config

    def _config(self) -> VerdictConfig:
        return _read_config(self._fds[MAP_CONFIG])

    def _set_config(self, cfg: VerdictConfig) -> None:
        _write_config(self._fds[MAP_CONFIG], cfg)

    def config(self) -> tuple[int, int]:
        """(generation, exempt_tgid) as the kernel sees them."""
        cfg = self._config()
        return cfg.generation, cfg.exempt_tgid

    def set_generation(self, gen: int) -> None:
        # Read-modify-write of one array slot: only the daemon writes it, from one thread.
        cfg = self._config()
        cfg.generation = gen
        self._set_config(cfg)

    def set_exempt_tgid(self, tgid: int) -> None:
        cfg = self._config()
        cfg.exempt_tgid = tgid
        self._set_config(cfg)

    # -- verdicts by fd

    def put(self, fd: int, dangerous: bool, generation: int, ctime_ns: int) -> None:
        sec, nsec = divmod(ctime_ns, _NSEC)
        val = VerdictValue(
            verdict=VERDICT_DANGEROUS if dangerous else VERDICT_SAFE,
            ctime_nsec=nsec,
            ctime_sec=sec,
            generation=generation,
        )
        key = ctypes.c_int(fd)
        _check(
            libbpf().bpf_map_update_elem(
                self._fds[MAP_VERDICTS], ctypes.byref(key), ctypes.byref(val), BPF_ANY
            ),
            f"verdict update (fd {fd})",
        )

    def delete(self, fd: int) -> None:
        key = ctypes.c_int(fd)
        rc = libbpf().bpf_map_delete_elem(self._fds[MAP_VERDICTS], ctypes.byref(key))
        if rc < 0 and -rc != errno_mod.ENOENT:
            _check(rc, f"verdict delete (fd {fd})")

    def get(self, fd: int) -> tuple[int, int, int] | None:
        """(verdict, generation, ctime_ns) stored on the file's inode, or None."""
        key = ctypes.c_int(fd)
        val = VerdictValue()
        rc = libbpf().bpf_map_lookup_elem(
            self._fds[MAP_VERDICTS], ctypes.byref(key), ctypes.byref(val)
        )
        if rc < 0:
            if -rc == errno_mod.ENOENT:
                return None
            _check(rc, f"verdict lookup (fd {fd})")
        return val.verdict, val.generation, val.ctime_sec * _NSEC + val.ctime_nsec

    # -- ring buffer

    def _on_sample(self, _ctx: int, data: int, size: int) -> int:
        self._pending.append(ctypes.string_at(data, size))  # parse outside the C callback
        return 0

    def ring_fd(self) -> int:
        """An fd that becomes readable when records wait (for loop.add_reader)."""
        return libbpf().ring_buffer__epoll_fd(self._rb)

    def consume(self) -> list[KernelBlock]:
        """Drain the ring buffer without blocking."""
        if not self._rb:
            raise ValueError("KernelVerdicts is closed")
        _check(libbpf().ring_buffer__consume(self._rb), "ring_buffer__consume")
        raw, self._pending = self._pending, []
        return [KernelBlock.from_record(r) for r in raw]

    # -- observability

    def prog_stats(self) -> dict[str, tuple[int, int]]:
        """hook -> (run_cnt, run_time_ns); counted only while kernel.bpf_stats_enabled=1."""
        lib = libbpf()
        stats: dict[str, tuple[int, int]] = {}
        for p in self.programs:
            link_fd = _check(lib.bpf_obj_get(os.fsencode(self.pin_dir / p.link_pin)), "link pin")
            try:
                link = _LinkInfo()
                _obj_info(link_fd, link, "link info")
            finally:
                os.close(link_fd)
            prog_fd = _check(lib.bpf_prog_get_fd_by_id(link.prog_id), "prog by id")
            try:
                info = _ProgInfo()
                _obj_info(prog_fd, info, "prog info")
            finally:
                os.close(prog_fd)
            stats[p.hook] = (info.run_cnt, info.run_time_ns)
        return stats

    def close(self) -> None:
        """Release this process's handles; the pins (and enforcement) stay."""
        if self._rb:
            libbpf().ring_buffer__free(self._rb)
            self._rb = 0
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def __enter__(self) -> "KernelVerdicts":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _obj_tag(obj_path: Path) -> int:
    return int.from_bytes(hashlib.sha256(obj_path.read_bytes()).digest()[:4], "little")


def _read_config(fd: int) -> VerdictConfig:
    cfg = VerdictConfig()
    key = ctypes.c_uint32(0)
    _check(libbpf().bpf_map_lookup_elem(fd, ctypes.byref(key), ctypes.byref(cfg)), "config lookup")
    return cfg


def _write_config(fd: int, cfg: VerdictConfig) -> None:
    key = ctypes.c_uint32(0)
    _check(
        libbpf().bpf_map_update_elem(fd, ctypes.byref(key), ctypes.byref(cfg), BPF_ANY),
        "config update",
    )


def _write_obj_tag(fd: int, tag: int) -> None:
    cfg = _read_config(fd)
    cfg.obj_tag = tag
    _write_config(fd, cfg)


# --- pins ------------------------------------------------------------------------------------

_EXPECTED_MAPS = {
    MAP_VERDICTS: (BPF_MAP_TYPE_INODE_STORAGE, ctypes.sizeof(VerdictValue)),
    MAP_CONFIG: (BPF_MAP_TYPE_ARRAY, ctypes.sizeof(VerdictConfig)),
    MAP_EVENTS: (BPF_MAP_TYPE_RINGBUF, 0),
}


def _reuse_pins(pin_dir: Path, progs: list[_Prog]) -> dict[str, int] | None:
    """Map fds from complete, well-formed pins, or None (missing, partial or stale layout)."""
    lib = libbpf()
    fds: dict[str, int] = {}
    ok = False
    try:
        for name, (mtype, vsize) in _EXPECTED_MAPS.items():
            fd = lib.bpf_obj_get(os.fsencode(pin_dir / name))
            if fd < 0:
                return None
            fds[name] = fd
            info = _map_info(fd)
            if info.type != mtype or info.value_size != vsize:
                log.warning(
                    "bpf_pin_layout_mismatch", map=name, type=info.type, value_size=info.value_size
                )
                return None
        for p in progs:
            fd = lib.bpf_obj_get(os.fsencode(pin_dir / p.link_pin))
            if fd < 0:
                return None
            os.close(fd)
        ok = True
        return fds
    except OSError:
        return None
    finally:
        if not ok:
            for fd in fds.values():
                os.close(fd)


def _load_and_pin(
    obj_path: Path, pin_dir: Path, progs: list[_Prog], reuse: dict[str, int] | None = None
) -> dict[str, int]:
    """Load the object, attach and pin; returns fds of the three maps.

    With reuse (fds of pinned maps), the programs are built against those maps, so verdicts
    survive, and each new link is pinned beside the old one and renamed over it: the old link
    detaches only once the new one is attached, so enforcement never lapses.
    """
    lib = libbpf()
    _recent_warnings.clear()
    obj = lib.bpf_object__open_file(os.fsencode(obj_path), None)
    if not obj:
        raise BpfUnavailable(f"cannot open BPF object {obj_path}: {os.strerror(ctypes.get_errno())}")
    links: list[int] = []
    fds: dict[str, int] = {}
    ok = False
    try:
        names = {p.name for p in progs}
        p = lib.bpf_object__next_program(obj, None)
        while p:
            if lib.bpf_program__name(p).decode() not in names:
                lib.bpf_program__set_autoload(p, False)
            p = lib.bpf_object__next_program(obj, p)
        maps: dict[str, int] = {}
        m = lib.bpf_object__next_map(obj, None)
        while m:
            maps[lib.bpf_map__name(m).decode()] = m
            m = lib.bpf_object__next_map(obj, m)
        missing = set(_EXPECTED_MAPS) - set(maps)
        if missing:
            raise BpfUnavailable(f"BPF object {obj_path} lacks maps {sorted(missing)}")
        for name, fd in (reuse or {}).items():
            rc = lib.bpf_map__reuse_fd(maps[name], fd)
            if rc < 0:
                raise BpfUnavailable(f"reusing pinned map {name} failed: {_errname(-rc)}")
        rc = lib.bpf_object__load(obj)
        if rc < 0:
            detail = f" ({_recent_warnings[-1]})" if _recent_warnings else ""
            raise BpfUnavailable(f"program load failed: {_errname(-rc)}{detail}")
        for name in _EXPECTED_MAPS:
            if reuse is None:
                rc = lib.bpf_map__pin(maps[name], os.fsencode(pin_dir / name))
                if rc < 0:
                    raise BpfUnavailable(f"pinning map {name} failed: {_errname(-rc)}")
            fds[name] = os.dup(lib.bpf_map__fd(maps[name]))
        p = lib.bpf_object__next_program(obj, None)
        while p:
            name = lib.bpf_program__name(p).decode()
            if name in names:
                link = lib.bpf_program__attach(p)
                if not link:
                    err = ctypes.get_errno()
                    raise BpfUnavailable(f"attaching {name} failed: {_errname(err)}")
                links.append(link)
                final = pin_dir / f"link_{name}"
                staging = pin_dir / f"new_{name}"  # bpffs refuses '.' in names
                rc = lib.bpf_link__pin(link, os.fsencode(staging))
                if rc < 0:
                    raise BpfUnavailable(f"pinning link {name} failed: {_errname(-rc)}")
                os.rename(staging, final)  # atomic: replaces (and so detaches) an older link
            p = lib.bpf_object__next_program(obj, p)
        wanted_links = {f"link_{n}" for n in names}
        for entry in pin_dir.iterdir():
            if entry.name.startswith("link_") and entry.name not in wanted_links:
                entry.unlink()  # a program an older build had and this one does not
        ok = True
        return fds
    finally:
        # Pinned links and maps stay alive in bpffs; the process-local handles go.
        for link in links:
            lib.bpf_link__destroy(link)
        lib.bpf_object__close(obj)
        if not ok:
            for fd in fds.values():
                os.close(fd)
            for entry in pin_dir.glob("new_*"):
                entry.unlink()


def _remove_pins(pin_dir: Path, keep_dir: bool) -> bool:
    removed = False
    try:
        entries = list(pin_dir.iterdir())
    except FileNotFoundError:
        return False
    for entry in entries:
        try:
            entry.unlink()
            removed = True
        except FileNotFoundError:
            pass
    if not keep_dir:
        try:
            pin_dir.rmdir()
            removed = True
        except FileNotFoundError:
            pass
    return removed


def _pinned_prog_ids(pin_dir: Path) -> list[int]:
    lib = libbpf()
    ids = []
    for entry in pin_dir.glob("link_*"):
        fd = lib.bpf_obj_get(os.fsencode(entry))
        if fd < 0:
            continue
        try:
            info = _LinkInfo()
            _obj_info(fd, info, "link info")
            ids.append(info.prog_id)
        except OSError:
            pass
        finally:
            os.close(fd)
    return ids


def _wait_progs_gone(prog_ids: list[int], timeout: float) -> bool:
    """Newer kernels release links from a workqueue: a program can run for a moment after its
    last pin went. A program id disappears only after its link detached it."""
    lib = libbpf()
    deadline = time.monotonic() + timeout
    pending = list(prog_ids)
    while pending:
        still = []
        for pid in pending:
            fd = lib.bpf_prog_get_fd_by_id(pid)
            if fd >= 0:
                os.close(fd)
                still.append(pid)
        pending = still
        if not pending:
            break
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def unload(pin_dir: Path = DEFAULT_PIN_DIR, wait: float = 10.0) -> bool:
    """Remove the pins: links detach, enforcement stops. True if anything was removed.

    Returns once the programs are gone (at most `wait` seconds), so that "unloaded" means
    "no longer enforcing" for whoever runs the next exec.
    """
    pin_dir = Path(pin_dir)
    try:
        prog_ids = _pinned_prog_ids(pin_dir) if pin_dir.is_dir() else []
    except BpfUnavailable:
        prog_ids = []
    removed = _remove_pins(pin_dir, keep_dir=False)
    if removed:
        gone = _wait_progs_gone(prog_ids, wait)
        if not gone:
            log.warning("bpf_unload_slow", pin_dir=str(pin_dir), waited_s=wait)
        log.info("bpf_unloaded", pin_dir=str(pin_dir))
    return removed


def probe() -> dict[str, object]:
    """What the running kernel offers for the fast path (for `onaccess doctor`); loads nothing."""
    result: dict[str, object] = {"bpf_lsm": False, "btf": VMLINUX_BTF.exists(), "inode_storage": False,
                                 "bpffs": _on_bpffs(DEFAULT_PIN_DIR.parent), "reason": ""}
    reasons: list[str] = []
    lsms = _lsm_list()
    if lsms is None:
        reasons.append(f"cannot read {LSM_FILE} (securityfs not mounted?)")
    elif "bpf" in lsms:
        result["bpf_lsm"] = True
    else:
        reasons.append(f"BPF LSM not active: 'bpf' missing from {LSM_FILE}; boot with lsm={','.join(lsms)},bpf")
    if not result["btf"]:
        reasons.append(f"no kernel BTF at {VMLINUX_BTF}")
    try:
        rc = libbpf().libbpf_probe_bpf_map_type(BPF_MAP_TYPE_INODE_STORAGE, None)
        result["inode_storage"] = rc == 1
        if rc != 1:
            reasons.append(
                "inode storage maps unavailable" + (f": {_errname(-rc)}" if rc < 0 else "")
            )
    except BpfUnavailable as exc:
        reasons.append(str(exc))
    if not result["bpffs"]:
        reasons.append(f"bpffs not mounted at {DEFAULT_PIN_DIR.parent}")
    result["reason"] = "; ".join(reasons)
    return result


__all__ = [
    "BpfUnavailable",
    "KernelBlock",
    "KernelVerdicts",
    "probe",
    "unload",
    "SHARED_STRUCTS",
]

"""TOML configuration with embedded defaults.

Owns: the `Config` dataclass and its loading/validation. Hands on: a frozen `Config` to every
other module; nothing else reads the TOML file. A missing default config file means "embedded
defaults"; a broken or unknown setting is a `ConfigError` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = Path("/etc/onaccess/onaccess.toml")
DEFAULT_STATE_DIR = Path("/var/lib/onaccess")
DEFAULT_RULES_D = Path("/etc/onaccess/rules.d")
EVENT_KINDS = ("exec", "open", "write", "on-demand")


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class Config:
    # What to protect. fanotify cannot mark a subtree: the filesystem holding each path is marked
    # and events outside these subtrees are allowed at once (and ignore-marked).
    watch: tuple[Path, ...] = (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"), Path("/home"))
    state_dir: Path = DEFAULT_STATE_DIR
    bundled_rules: bool = True
    rule_dirs: tuple[Path, ...] = (DEFAULT_RULES_D,)
    engine: str = "yara"  # yara | boreal
    open_perm: bool = True  # FAN_OPEN_PERM as well as FAN_OPEN_EXEC_PERM: catches scripts
    # Scan files as they are written, before their first open: "executables" (an x bit, or ELF,
    # script or PE magic: what is likely to be run next), "all", or "off". Others are scanned
    # at their first open.
    close_write_scan: str = "executables"
    # A written executable up to this size is scanned by the event reader itself, before its
    # first exec can even be asked about (no worker round trip); 0: always in a worker process.
    inline_scan_max: int = 64 * 1024
    deadline: float = 2.0  # seconds a permission event may wait for its answer
    on_error: str = "allow"  # answer on timeout / scan error / oversize: allow | deny
    max_file_size: int = 32 * 1024 * 1024
    workers: int = max(2, os.cpu_count() or 2)  # processes for scans someone is waiting for
    background_workers: int = 1  # processes for CLOSE_WRITE scans nobody waits for yet
    background_queue: int = 4096  # most CLOSE_WRITE scans queued at once (each holds an fd)
    cache_size: int = 65536
    exclude_paths: tuple[Path, ...] = ()
    exclude_uids: tuple[int, ...] = ()
    exclude_exes: tuple[Path, ...] = ()
    actions: dict[str, str] = field(default_factory=lambda: {k: "none" for k in EVENT_KINDS})
    on_detect: str = ""  # command run with the detection as JSON on stdin
    on_detect_timeout: float = 10.0
    audit: bool = False  # FAN_AUDIT: denials also go to the kernel audit log (needs CAP_AUDIT_WRITE)
    bpf: str = "auto"  # auto | off | require
    bpf_pin_dir: Path = Path("/sys/fs/bpf/onaccess")
    log_level: str = "info"
    log_file: Path | None = None  # None: JSON lines on stderr (journald picks them up)

    @property
    def db_path(self) -> Path:
        return self.state_dir / "verdicts.db"

    @property
    def socket_path(self) -> Path:
        return self.state_dir / "control.sock"

    @property
    def quarantine_dir(self) -> Path:
        return self.state_dir / "quarantine"

    def rule_paths(self) -> list[Path]:
        from .paths import bundled_rules_dir

        paths = [bundled_rules_dir()] if self.bundled_rules else []
        # rules.d may be absent or empty on a fresh install: that is not an error.
        paths += [d for d in self.rule_dirs if d.is_dir() and any(d.glob("*.yar*"))]
        return paths

    def own_paths(self) -> list[Path]:
        """Files the daemon itself reads and writes: never scanned, never blocked."""
        own = [self.state_dir, *self.rule_paths()]
        if self.log_file:
            own.append(self.log_file)
        return own

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)


_PATH_TUPLES = {"watch", "rule_dirs", "exclude_paths", "exclude_exes"}
_PATHS = {"state_dir", "bpf_pin_dir", "log_file"}
_CHOICES = {"engine": ("yara", "boreal"), "on_error": ("allow", "deny"), "bpf": ("auto", "off", "require"),
            "log_level": ("debug", "info", "warning", "error"), "close_write_scan": ("executables", "all", "off")}
# Settings that were booleans once: the old spelling still means what it meant.
_BOOL_CHOICES = {"close_write_scan": {True: "all", False: "off"}}


def load(path: Path | None = None, **overrides: Any) -> Config:
    """Embedded defaults, then the TOML file, then command-line overrides (None = not given)."""
    values: dict[str, Any] = {}
    explicit = path is not None
    path = path or DEFAULT_CONFIG
    if path.exists() or explicit:
        try:
            with open(path, "rb") as f:
                values = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    values.update({k: v for k, v in overrides.items() if v is not None})
    return _build(values, path)


def _build(values: dict[str, Any], source: Path) -> Config:
    known = {f.name: f for f in dataclasses.fields(Config)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{source}: unknown setting {key!r}")
        try:
            kwargs[key] = _convert(key, value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: setting {key!r}: {exc}") from exc
    return Config(**kwargs)


def _convert(key: str, value: Any) -> Any:
    if key in _PATH_TUPLES:
        if isinstance(value, (str, Path)):
            value = [value]
        return tuple(Path(v).absolute() for v in value)
    if key in _PATHS:
        return Path(value).absolute() if value not in (None, "") else None
    if key in _CHOICES:
        if isinstance(value, bool) and key in _BOOL_CHOICES:
            value = _BOOL_CHOICES[key][value]
        if value not in _CHOICES[key]:
            raise ValueError(f"must be one of {', '.join(_CHOICES[key])}, not {value!r}")
        return value
    if key == "actions":
        if not isinstance(value, dict):
            raise TypeError("must be a table such as {exec = 'quarantine'}")
        merged = {k: "none" for k in EVENT_KINDS}
        for kind, action in value.items():
            if kind not in EVENT_KINDS or action not in ("none", "quarantine"):
                raise ValueError(f"{kind} = {action!r}: kinds are {EVENT_KINDS}, actions none|quarantine")
            merged[kind] = action
        return merged
    if key in ("deadline", "on_detect_timeout"):
        value = float(value)
        if value <= 0:
            raise ValueError("must be positive")
        return value
    if key == "inline_scan_max":
        if isinstance(value, bool) or int(value) < 0:
            raise ValueError("must be 0 (off) or a positive number of bytes")
        return int(value)
    if key in ("max_file_size", "workers", "background_workers", "background_queue", "cache_size"):
        if isinstance(value, bool) or int(value) <= 0:
            raise ValueError("must be a positive integer")
        return int(value)
    if key == "exclude_uids":
        return tuple(int(v) for v in value)
    if key in ("bundled_rules", "open_perm", "audit"):
        if not isinstance(value, bool):
            raise TypeError("must be true or false")
        return value
    if key == "on_detect":
        return str(value)
    return value

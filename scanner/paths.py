"""Where the installed data lives: bundled rules, the compiled BPF object, the schema.

Owns only path resolution. A source checkout keeps `rules/`, `bpf/` and `db/` at the repo
root; a deb/rpm install keeps them under /usr/share/onaccess. ONACCESS_DATA_DIR overrides both
(tests, relocated installs).
"""

from __future__ import annotations

import os
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent
_SYSTEM = Path("/usr/share/onaccess")


def data_dir() -> Path:
    override = os.environ.get("ONACCESS_DATA_DIR")
    if override:
        return Path(override)
    if (_CHECKOUT / "rules").is_dir() and (_CHECKOUT / "db").is_dir():
        return _CHECKOUT
    return _SYSTEM


def bundled_rules_dir() -> Path:
    return data_dir() / "rules"


def bpf_object() -> Path:
    return data_dir() / "bpf" / "verdict.bpf.o"


def schema_dir() -> Path:
    return data_dir() / "db"

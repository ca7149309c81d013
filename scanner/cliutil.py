"""Shared pieces of the CLI: common options, config loading, JSON-or-human output, exit codes.

Owns presentation only; every command module (cli.py, cli_threats.py) builds on these so that
`--json`, `--config` and `--state-dir` mean the same thing everywhere.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from . import config as config_mod

EXIT_OK, EXIT_FOUND, EXIT_ERROR = 0, 1, 2


class CliError(Exception):
    """A user-facing error: printed as one line (or a JSON object), exit status 2."""


def common_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--json", action="store_true", help="machine-readable output")
    parent.add_argument("--config", type=Path, help=f"config file (default {config_mod.DEFAULT_CONFIG})")
    parent.add_argument("--state-dir", type=Path, help=f"state dir: DB, quarantine, control socket "
                        f"(default {config_mod.DEFAULT_STATE_DIR})")
    return parent


def load_config(args: argparse.Namespace, **overrides: Any) -> config_mod.Config:
    try:
        return config_mod.load(args.config, state_dir=args.state_dir, **overrides)
    except config_mod.ConfigError as exc:
        raise CliError(str(exc)) from exc


def emit(args: argparse.Namespace, data: Any, human: Callable[[], None] | str | None = None) -> None:
    if args.json or human is None:
        json.dump(data, sys.stdout, indent=None if args.json else 2, default=str)
        sys.stdout.write("\n")
    elif callable(human):
        human()
    else:
        print(human)

"""pytest fixtures built on tests/oatest.py: root gate, private tmpfs, daemon factory."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import os
import pytest

from oatest import Daemon, need, start_daemon, tmpfs_mount


@pytest.fixture
def root() -> None:
    need(os.geteuid() == 0, "this test needs root")


@pytest.fixture
def tmpfs(root: None) -> Iterator[Path]:
    with tmpfs_mount() as mnt:
        yield mnt


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def factory(watch: list[Path], settings: dict[str, Any] | None = None, state_dir: Path | None = None) -> Daemon:
        d = start_daemon(watch, state_dir or tmp_path / f"state{len(started)}", settings)
        started.append(d)
        return d

    yield factory
    for d in started:
        d.stop()


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A state dir on the root filesystem (/tmp): another filesystem than the test's tmpfs."""
    return tmp_path / "state"

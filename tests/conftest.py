"""pytest fixtures built on tests/oatest.py: root gate, private tmpfs, daemon factory."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import os
import pytest

from oatest import Daemon, mount_tmpfs, need, start_daemon, umount


@pytest.fixture
def root() -> None:
    need(os.geteuid() == 0, "this test needs root")


@pytest.fixture
def tmpfs(root: None) -> Iterator[Path]:
    mnt = mount_tmpfs()
    try:
        yield mnt
    finally:
        umount(mnt)


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

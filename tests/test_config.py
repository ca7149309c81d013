"""Config loading: choices, the old boolean spelling of close_write_scan, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from scanner import config


def _load(tmp_path: Path, text: str) -> config.Config:
    f = tmp_path / "c.toml"
    f.write_text(text)
    return config.load(f)


@pytest.mark.parametrize("text, expected", [
    ("", "executables"),
    ('close_write_scan = "all"\n', "all"),
    ('close_write_scan = "off"\n', "off"),
    ("close_write_scan = true\n", "all"),  # the boolean of earlier releases keeps its meaning
    ("close_write_scan = false\n", "off"),
])
def test_close_write_scan_values(tmp_path: Path, text: str, expected: str) -> None:
    assert _load(tmp_path, text).close_write_scan == expected


def test_bad_choice_names_file_and_key(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match=r"c\.toml: setting 'close_write_scan': must be one of"):
        _load(tmp_path, 'close_write_scan = "some"\n')
    with pytest.raises(config.ConfigError, match="unknown setting 'close_write'"):
        _load(tmp_path, "close_write = true\n")

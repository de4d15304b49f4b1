"""Atomic writes: the new file whole, or the old one, and no temp file left either way."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tuner.durable import atomic_write_lines, atomic_write_text


def test_lines_replace_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    atomic_write_text(path, "old\n")
    atomic_write_lines(path, (f"{i}\n" for i in range(3)))
    assert path.read_text() == "0\n1\n2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]


def test_a_failure_while_the_lines_are_read_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    atomic_write_text(path, "old\n")

    def lines() -> Iterator[str]:
        yield "half\n"
        raise KeyboardInterrupt  # the run was stopped mid-way

    with pytest.raises(KeyboardInterrupt):
        atomic_write_lines(path, lines())
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]

"""The one JSONL line reader: lines split on ``\\n`` only, every bad line named with its number
and a one-line reason, nothing json.loads raises on text escaping it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retriever.jsonl import read_bytes, read_path, records


def _read(data: bytes) -> tuple[list, list]:
    return records(read_bytes(data))


def test_lines_split_on_newline_only_with_cr_and_a_leading_bom_dropped() -> None:
    row = {"text": "a\u2028b\u2029c\x85d\x0be\x1cf\rg"}
    line = json.dumps(row, ensure_ascii=False).encode()
    good, bad = _read(b"\xef\xbb\xbf" + line + b"\r\n\n  \n" + line + b"\n")
    assert bad == [] and good == [(1, row), (4, row)]


def test_a_bom_after_the_first_line_is_a_bad_line() -> None:
    good, bad = _read(b'{"a": 1}\n\xef\xbb\xbf{"a": 2}\n')
    assert [n for n, _ in good] == [1] and [n for n, _ in bad] == [2]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"{not json", "not JSON (Expecting property name enclosed in double quotes at column 2)"),
        (b'{"n": ' + b"7" * 5000 + b"}", "not JSON (an integer of 5000 digits, over"),
        (b'{"n": -' + b"7" * 5000 + b"}", "not JSON (an integer of 5000 digits"),
        (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "not JSON (nested too deeply"),
        (b"[1, 2]", "a JSON object is expected, got an array"),
        (b'"text"', "a JSON object is expected, got a string"),
        (b"3", "a JSON object is expected, got a number"),
        (b"null", "a JSON object is expected, got null"),
        (b'{"a": "x\xff"}', "not UTF-8 text (at byte 9)"),
        (b'{"a": "\\ud800"}', "a string holds a lone surrogate escape"),
    ],
)
def test_each_kind_of_bad_line_is_reported_not_raised(line: bytes, reason: str) -> None:
    good, bad = _read(b'{"ok": 1}\n' + line + b'\n{"ok": 2}\n')
    assert [n for n, _ in good] == [1, 3]
    [(number, why)] = bad
    assert number == 2 and why.startswith(reason) and "\n" not in why, why


def test_a_surrogate_pair_escape_is_one_character() -> None:
    good, bad = _read(b'{"a": "\\ud83d\\ude00"}\n')
    assert bad == [] and good == [(1, {"a": "\U0001f600"})]


def test_every_bad_line_is_listed_in_order() -> None:
    good, bad = _read(b'{"a": 1}\n{bad\n\xff\n[1]\n{"b": 2}\n' + b"9" * 5000 + b"\n")
    assert [n for n, _ in good] == [1, 5] and [n for n, _ in bad] == [2, 3, 4, 6]


def test_a_file_reads_as_its_bytes_do(tmp_path: Path) -> None:
    data = b'\xef\xbb\xbf{"a": "x\xe2\x80\xa8y"}\r\n{bad\n\n{"b": 1}'
    (tmp_path / "f.jsonl").write_bytes(data)
    assert list(read_path(tmp_path / "f.jsonl")) == list(read_bytes(data))
    good, bad = records(read_path(tmp_path / "f.jsonl"))
    assert good == [(1, {"a": "x\u2028y"}), (4, {"b": 1})] and [n for n, _ in bad] == [2]

"""Read JSONL: the one line reader behind every JSONL input (ingest, ``/v1/files``, tuning data,
eval datasets), so all of them split, parse and report alike.

Lines are split on ``\\n`` only (a JSON string may hold U+2028, U+0085 or other characters that
``str.splitlines`` would split on); a trailing ``\\r`` is dropped, and so is a byte-order mark at
the start of the first line. Each line is decoded as UTF-8 on its own, so one bad byte costs one
line. A blank line is skipped; any other line must be one JSON object. A line that is not is
reported with its 1-based number and a one-line reason, never raised: whatever ``json.loads``
raises on text (``JSONDecodeError``, the ``ValueError`` of an integer over Python's digit limit,
``RecursionError`` from very deep nesting) is caught here. Knows nothing of what a record must
hold; callers check the fields.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BOM = b"\xef\xbb\xbf"
Records = list[tuple[int, dict[str, Any]]]  # (line number, record)
Problems = list[tuple[int, str]]  # (line number, reason)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # \ud800..\udfff, half of a pair or alone


@dataclass(frozen=True)
class Line:
    """One non-blank line: its record, or (record None) the reason it is not one."""

    number: int
    record: dict[str, Any] | None
    problem: str = ""


def read_bytes(data: bytes) -> Iterator[Line]:
    """Every non-blank line of JSONL bytes, in order."""
    return _read(data.split(b"\n"))


def read_path(path: str | Path) -> Iterator[Line]:
    """Every non-blank line of a JSONL file, read as it goes (a file yields lines at ``\\n``)."""
    with open(path, "rb") as fh:
        yield from _read(fh)


def records(lines: Iterable[Line]) -> tuple[Records, Problems]:
    """(line number, record) of the good lines and (line number, reason) of the bad ones."""
    good: Records = []
    bad: Problems = []
    for line in lines:
        if line.record is None:
            bad.append((line.number, line.problem))
        else:
            good.append((line.number, line.record))
    return good, bad


def _read(raw_lines: Iterable[bytes]) -> Iterator[Line]:
    for number, raw in enumerate(raw_lines, 1):
        raw = raw.removesuffix(b"\n").removesuffix(b"\r")
        if number == 1:
            raw = raw.removeprefix(BOM)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield Line(number, None, f"not UTF-8 text (at byte {exc.start + 1})")
            continue
        if text.strip():
            yield parse(number, text)


def parse(number: int, text: str) -> Line:
    """One line's text as a ``Line``: a JSON object, or the reason it is not one."""
    try:
        value = json.loads(text, parse_int=_int)
    except json.JSONDecodeError as exc:
        return Line(number, None, f"not JSON ({exc.msg} at column {exc.colno})")
    except ValueError as exc:
        return Line(number, None, f"not JSON ({_first_line(exc)})")
    except RecursionError:
        return Line(number, None, "not JSON (nested too deeply to read)")
    if not isinstance(value, dict):
        return Line(number, None, f"a JSON object is expected, got {_kind(value)}")
    if _SURROGATE_ESCAPE.search(text) and not _encodable(value):
        return Line(number, None, "a string holds a lone surrogate escape (\\ud800-\\udfff)")
    return Line(number, value)


def _int(digits: str) -> int:
    """A JSON integer; one longer than Python converts gets a message that says so plainly."""
    limit = sys.get_int_max_str_digits()
    count = len(digits.lstrip("-"))
    if limit and count > limit:
        raise ValueError(f"an integer of {count} digits, over the {limit}-digit limit")
    return int(digits)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().split("\n", 1)[0]
    return text[:200] or type(exc).__name__


def _kind(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _encodable(value: Any) -> bool:
    """Whether every string in ``value`` can be written as UTF-8 (no lone surrogate)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True

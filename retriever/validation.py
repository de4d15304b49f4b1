"""What the index accepts as a document id, as metadata and as a search filter, written once.

The service checks request bodies with these same rules at the edge (a 422 naming the field);
the index checks them again on every write, so a file loaded from disk or a library caller is
held to the same bounds. Ids have two tiers: ``check_id`` for a new id, ``check_any_id`` for one
already stored (a row stored before the look-alike and dot-segment rules can still be updated).
Reads never check: a row stored before a bound existed stays readable.

Each check raises ``ValueError`` whose message starts with the offending field's path
(``metadata.a.b``, ``filters.tags[3]``), which pydantic turns into a 422 naming the field.
"""

from __future__ import annotations

import json
import math
import unicodedata
from typing import Any

ID_MAX_CHARS = 256
TEXT_MAX_CHARS = 4 * 2**20  # one document's text (a long book); bodies are bounded before this
METADATA_MAX_BYTES = 16 * 1024  # the JSON text as stored
METADATA_MAX_DEPTH = 8  # nested objects and lists, the top-level object counted
METADATA_MAX_KEY_CHARS = 128
INT_BOUND = 2**63  # JSON integers stay within a signed 64-bit value (SQLite, JavaScript-safe ids)
FILTER_MAX_KEYS = 16
FILTER_MAX_VALUES = 100  # scalars in one key's list
FILTER_MAX_STRING_CHARS = 1024

Scalar = str | int | float | bool | None


def _control(ch: str) -> bool:
    """Control, format (bidi overrides, zero-width), unassigned, surrogate, private-use and
    line/paragraph separator characters: none has a place in any id."""
    category = unicodedata.category(ch)
    return category[0] == "C" or category in ("Zl", "Zp")


def _look_alike(ch: str) -> bool:
    """A space other than the ASCII one, or U+FFFD (what undecodable bytes became): refused in
    new ids, where look-alikes must not coexist."""
    return (unicodedata.category(ch) == "Zs" and ch != " ") or ch == "\ufffd"


def id_char(ch: str) -> bool:
    """Whether a new id may hold ``ch`` (``check_id``'s character rules)."""
    return not _control(ch) and not _look_alike(ch)


def check_any_id(value: str, field: str = "id") -> str:
    """An id any write takes, one already stored included: 1..256 characters, not only
    whitespace, no control, format (bidi, zero-width) or line/paragraph separator character.
    ``check_id``'s further rules hold for new ids only, so a row stored before them can still
    be updated under its id."""
    if not isinstance(value, str):
        raise ValueError(f"{field}: must be a string")
    if not value.strip():
        raise ValueError(f"{field}: must not be empty or only whitespace")
    if len(value) > ID_MAX_CHARS:
        raise ValueError(f"{field}: at most {ID_MAX_CHARS} characters, got {len(value)}")
    bad = next((ch for ch in value if _control(ch)), None)
    if bad is not None and unicodedata.category(bad)[0] == "C":
        raise ValueError(
            f"{field}: control, format or bidi character U+{ord(bad):04X} is not allowed"
        )
    if bad is not None:
        raise ValueError(f"{field}: line or paragraph separator U+{ord(bad):04X} is not allowed")
    return value


def check_id(value: str, field: str = "id") -> str:
    """A new document id: what ``check_any_id`` takes, with no look-alike space, no U+FFFD and
    no ``.`` or ``..`` segment (``/`` may split it in segments, a file's path; a URL would
    resolve those away)."""
    check_any_id(value, field)
    bad = next((ch for ch in value if _look_alike(ch)), None)
    if bad is not None:
        raise ValueError(
            f"{field}: look-alike character U+{ord(bad):04X} is not allowed (of the spaces, "
            "only the ASCII one)"
        )
    if any(part in (".", "..") for part in value.split("/")):
        raise ValueError(f"{field}: '.' and '..' are not allowed as a /-separated part")
    return value


def normal_id(value: str, spaces: bool = False) -> str:
    """The id a loader gives a file or a jsonl line: ``value`` without ``.`` segments
    (``./docs/a.md`` and ``docs/./a.md``, as ``find .`` prints them, are ``docs/a.md``) and,
    with ``spaces``, with every other space (Unicode Zs: U+00A0, U+202F, U+3000; macOS puts
    U+202F in screenshot names) as an ASCII one. ``..`` stays (what it means depends on the
    folder); an id that would be left blank is returned as it was, for ``check_id`` to refuse."""
    if spaces:
        value = "".join(" " if unicodedata.category(ch) == "Zs" else ch for ch in value)
    parts = value.split("/")
    joined = "/".join(part for part in parts if part != ".")
    return joined if joined.strip() and "." in parts else value


def check_text(value: Any, field: str = "text") -> str:
    """A document's text: not empty, at most 4 Mi characters, valid Unicode (no lone
    surrogate, which no UTF-8 file or database can hold)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{field}: must not be empty")
    if len(value) > TEXT_MAX_CHARS:
        raise ValueError(f"{field}: at most {TEXT_MAX_CHARS} characters, got {len(value)}")
    _check_unicode(value, field)
    return value


def _check_unicode(value: str, field: str) -> None:
    if value.isascii():
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{field}: not valid Unicode (a lone surrogate at character {exc.start})"
        ) from None


def check_metadata(value: Any, field: str = "metadata") -> dict[str, Any]:
    """A metadata object: JSON only (finite numbers, 64-bit integers, string keys up to 128
    characters), nested at most 8 deep, at most 16 KiB as JSON."""
    if not isinstance(value, dict):
        raise ValueError(f"{field}: must be an object")
    _check_json(value, field, 1)
    size = len(json.dumps(value, ensure_ascii=False).encode())
    if size > METADATA_MAX_BYTES:
        raise ValueError(f"{field}: at most {METADATA_MAX_BYTES} bytes as JSON, got {size}")
    return value


def _check_json(value: Any, path: str, depth: int) -> None:
    if isinstance(value, dict | list):
        if depth > METADATA_MAX_DEPTH:
            raise ValueError(f"{path}: nested deeper than {METADATA_MAX_DEPTH} levels")
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ValueError(f"{path}: keys must be strings")
                if len(key) > METADATA_MAX_KEY_CHARS:
                    raise ValueError(
                        f"{path}: keys have at most {METADATA_MAX_KEY_CHARS} characters"
                    )
                if any(unicodedata.category(ch)[0] == "C" for ch in key):
                    raise ValueError(f"{path}: keys may not hold control or format characters")
                _check_unicode(key, path)
                _check_json(item, f"{path}.{key}", depth + 1)
        else:
            for i, item in enumerate(value):
                _check_json(item, f"{path}[{i}]", depth + 1)
        return
    _check_scalar(value, path)


def _check_scalar(value: Any, path: str) -> None:
    if isinstance(value, str):
        _check_unicode(value, path)
        return
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if not -INT_BOUND <= value < INT_BOUND:
            raise ValueError(f"{path}: integers must fit in 64 bits")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path}: numbers must be finite")
        return
    raise ValueError(f"{path}: {type(value).__name__} is not a JSON value")


def check_filters(value: Any, field: str = "filters") -> dict[str, Any] | None:
    """Search filters: at most 16 metadata keys, each equal to a scalar or to any of a list of
    at most 100 scalars (a list matches a document whose value is one of them)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"{field}: must be an object of metadata key -> value")
    if len(value) > FILTER_MAX_KEYS:
        raise ValueError(f"{field}: at most {FILTER_MAX_KEYS} keys, got {len(value)}")
    for key, wanted in value.items():
        if not isinstance(key, str) or len(key) > METADATA_MAX_KEY_CHARS:
            raise ValueError(f"{field}: keys are strings of at most {METADATA_MAX_KEY_CHARS}")
        path = f"{field}.{key}"
        if isinstance(wanted, list):
            if len(wanted) > FILTER_MAX_VALUES:
                raise ValueError(f"{path}: at most {FILTER_MAX_VALUES} values, got {len(wanted)}")
            for i, item in enumerate(wanted):
                _check_filter_scalar(item, f"{path}[{i}]")
        else:
            _check_filter_scalar(wanted, path)
    return value


def _check_filter_scalar(value: Any, path: str) -> None:
    if isinstance(value, dict | list):
        raise ValueError(f"{path}: a filter value is a scalar or a list of scalars")
    _check_scalar(value, path)
    if isinstance(value, str) and len(value) > FILTER_MAX_STRING_CHARS:
        raise ValueError(f"{path}: at most {FILTER_MAX_STRING_CHARS} characters")

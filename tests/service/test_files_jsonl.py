"""/v1/files reads uploads with the one JSONL line reader: a line json.loads cannot read (an
integer over Python's digit limit, nesting too deep, a lone surrogate) is a 422 naming the file
and the line, never a 500, and nothing is stored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.settings import Settings
from tests.helpers import app_clients

CHAT = (
    b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
)


@pytest.fixture
def client(tiny_llama: Path, tmp_path: Path) -> Iterator[Any]:
    with app_clients(tiny_llama, tmp_path) as make:
        yield make(Settings())


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"messages": [], "n": ' + b"9" * 5000 + b"}", "not JSON (an integer of 5000 digits"),
        (b'{"m": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "not JSON (nested too deeply"),
        (b'{"messages": "\\udc00"}', "a string holds a lone surrogate"),
    ],
)
def test_an_unreadable_line_is_a_422_naming_file_and_line(
    client: Any, line: bytes, reason: str
) -> None:
    raw = CHAT + line + b"\n" + CHAT
    r = client.post("/v1/files", files={"file": ("big.jsonl", raw, "application/jsonl")})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_file"
    assert error["message"].startswith(f"big.jsonl: line 2: {reason}"), error["message"]
    [detail] = error["details"]
    assert (detail["file"], detail["line"]) == ("big.jsonl", 2)
    assert detail["reason"].startswith(reason)
    assert client.get("/v1/files").json()["files"] == []

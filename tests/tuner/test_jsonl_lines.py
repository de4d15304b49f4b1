"""JSONL inputs of tuning and evaluation split lines on ``\\n`` only and name every bad line;
an eval set's ids are the index's ids (printable)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.datasets.formats import DatasetError, load
from tuner.data import jsonl_records, read_jsonl


def test_a_line_holding_unicode_line_breaks_is_one_record(tmp_path: Path) -> None:
    turns = [
        {"role": "user", "content": "a\u2028b\u2029c"},
        {"role": "assistant", "content": "d\x85e\x0bf\x1cg"},
    ]
    f = tmp_path / "train.jsonl"
    line = json.dumps({"messages": turns}, ensure_ascii=False)
    f.write_text("\ufeff" + line + "\r\n\n" + line + "\n", encoding="utf-8", newline="")
    records, problems = jsonl_records(f)
    assert problems == [] and [n for n, _ in records] == [1, 3]
    assert read_jsonl(f)[0].messages[0]["content"] == "a\u2028b\u2029c"


def test_every_bad_line_is_reported_with_its_number(tmp_path: Path) -> None:
    f = tmp_path / "train.jsonl"
    f.write_bytes(b'{"a": 1}\n{bad\n\xff\n[1]\n{"b": "x\xe2\x80\xa8y"}\n')
    records, problems = jsonl_records(f)
    assert [n for n, _ in records] == [1, 5] and [n for n, _ in problems] == [2, 3, 4]


@pytest.mark.parametrize("bad", ["evil\u202eid", "ctl\x07", "x" * 300])
def test_eval_set_ids_must_be_printable(tmp_path: Path, bad: str) -> None:
    f = tmp_path / "squad.jsonl"
    rows = [
        {"id": "ok", "context": "c\u2028d", "question": "q", "answers": ["a"]},
        {"id": bad, "context": "c", "question": "q", "answers": ["a"]},
    ]
    f.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    with pytest.raises(DatasetError, match=rf"{f}:2: id: "):
        load(f)

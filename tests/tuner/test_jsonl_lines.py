"""JSONL inputs of tuning and evaluation split lines on ``\\n`` only and name every bad line;
an eval set's ids are the index's ids (printable)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.datasets.formats import DatasetError, load
from tuner.data import DataError, jsonl_records, read_jsonl


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


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"prompt": "p", "completion": "c", "n": ' + "9" * 5000 + "}", "not JSON (an integer"),
        ('{"prompt": ' + "[" * 50_000 + "]" * 50_000 + "}", "not JSON (nested too deeply"),
    ],
)
def test_tuning_data_names_a_line_json_cannot_read(tmp_path: Path, line: str, reason: str) -> None:
    f = tmp_path / "train.jsonl"
    ok = json.dumps({"prompt": "p", "completion": "c"})
    f.write_text(f"{ok}\n{line}\n{ok}\n")
    with pytest.raises(DataError) as exc:
        read_jsonl(f)
    [(number, why)] = exc.value.problems
    assert number == 2 and why.startswith(reason), why


def test_an_eval_set_names_a_line_json_cannot_read(tmp_path: Path) -> None:
    f = tmp_path / "squad.jsonl"
    ok = json.dumps({"id": "a", "context": "c", "question": "q", "answers": ["a"]})
    f.write_text(f'{ok}\n{{"id": {"9" * 5000}}}\n')
    with pytest.raises(DatasetError, match=rf"{f}:2: not JSON \(an integer of 5000 digits"):
        load(f)


def test_an_eval_set_reports_every_bad_line(tmp_path: Path) -> None:
    f = tmp_path / "squad.jsonl"
    rows = [
        json.dumps({"id": "a", "context": "c", "question": "q", "answers": ["a"]}),
        "{not json",
        json.dumps({"id": "b", "context": "c", "question": "", "answers": ["a"]}),
        json.dumps({"id": "c", "context": "c", "question": "q", "answers": 3}),
        json.dumps({"id": "ctl\x07", "context": "c", "question": "q"}),
        json.dumps({"id": "e", "context": "", "question": "q"}),
        json.dumps({"id": "f", "context": "c", "question": "q"}),
    ]
    f.write_text("\n".join(rows) + "\n")
    with pytest.raises(DatasetError) as exc:
        load(f)
    assert [(p[0], p[1]) for p in exc.value.problems] == [(str(f), n) for n in (2, 3, 4, 5, 6)]
    message = str(exc.value)
    assert message.startswith(f"{f}:2: not JSON") and "(and 4 more bad lines)" in message
    for n in (3, 4, 5, 6):
        assert f"{f}:{n}: " in message


def test_an_eval_set_lists_at_most_the_cap_of_bad_lines(tmp_path: Path) -> None:
    from eval.datasets.formats import SHOWN_PROBLEMS

    f = tmp_path / "qa.jsonl"
    f.write_text('{"question": ""}\n' * (SHOWN_PROBLEMS + 5))
    with pytest.raises(DatasetError) as exc:
        load(f, live=True)
    assert len(exc.value.problems) == SHOWN_PROBLEMS
    assert f"(and {SHOWN_PROBLEMS + 4} more bad lines)" in str(exc.value).split("\n")[0]


def test_every_bad_line_of_a_beir_folder_is_reported(tmp_path: Path) -> None:
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text(
        '{"_id": "d1", "text": "t"}\n{"_id": "d2", "text": ""}\n{"text": "no id"}\n'
    )
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "q"}\n[1]\n')
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\tx\nq1\n")
    with pytest.raises(DatasetError) as exc:
        load(tmp_path)
    got = [(Path(p[0]).name, p[1]) for p in exc.value.problems]
    assert got == [
        ("corpus.jsonl", 2),
        ("corpus.jsonl", 3),
        ("queries.jsonl", 2),
        ("test.tsv", 2),
        ("test.tsv", 3),
    ]

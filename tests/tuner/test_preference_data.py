"""Preference files are read and checked like SFT data: every problem with its line, the kinds
kept apart, lengths through the chat template, duplicates, counts and KTO's class balance; the
held-out split never shares a prompt with training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuner.config import Recipe
from tuner.data import DataError
from tuner.preference_data import (
    PreferenceRow,
    closing,
    kto_weights,
    read_jsonl,
    split,
    validate,
    write_jsonl,
)


def _write(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_bad_lines_are_all_reported_with_their_numbers(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "p.jsonl",
        [
            {"prompt": "q1", "chosen": "a", "rejected": "b"},
            {"prompt": "", "chosen": "a", "rejected": "b"},
            {"prompt": "q3", "chosen": "same", "rejected": " same "},
            {"prompt": "q4", "chosen": ""},
            "{not json",
            {"prompt": [{"role": "assistant", "content": "x"}], "chosen": "a", "rejected": "b"},
            {"prompt": "q7", "rejected": "b", "chosen": [{"role": "user", "content": "a"}]},
            {"prompt": "q8"},
        ],
    )
    with pytest.raises(DataError) as err:
        read_jsonl(path)
    lines = dict(err.value.problems)
    assert set(lines) == {2, 3, 4, 5, 6, 7, 8}
    assert "prompt" in lines[2] and "same answer" in lines[3] and "empty answer" in lines[4]
    assert "last turn must be the user's" in lines[6] and "assistant's" in lines[7]
    assert "completion and label (kto) or chosen and rejected (dpo)" in lines[8]


def test_one_file_holds_one_kind_and_labels_read_both_ways(tmp_path: Path) -> None:
    mixed = _write(
        tmp_path / "m.jsonl",
        [
            {"prompt": "q", "chosen": "a", "rejected": "b"},
            {"prompt": "q", "completion": "a", "label": True},
        ],
    )
    with pytest.raises(DataError, match="one file holds one kind"):
        read_jsonl(mixed)
    kto = _write(
        tmp_path / "k.jsonl",
        [
            {"prompt": "q", "completion": "a", "label": "up"},
            {"prompt": "q", "completion": [{"role": "assistant", "content": "b"}], "label": "down"},
        ],
    )
    rows = read_jsonl(kto)
    assert [(r.kind, r.completion, r.label) for r in rows] == [
        ("kto", "a", True),
        ("kto", "b", False),
    ]
    assert rows[0].prompt == [{"role": "user", "content": "q"}] and rows[1].meta["line"] == 2
    with pytest.raises(DataError, match="label"):
        read_jsonl(
            _write(tmp_path / "b.jsonl", [{"prompt": "q", "completion": "a", "label": "maybe"}])
        )


def _kto(i: int, label: bool, text: str = "an answer") -> PreferenceRow:
    return PreferenceRow(
        [{"role": "user", "content": f"question {i}"}], text, label, meta={"line": i + 1}
    )


def test_validate_checks_kind_length_duplicates_count_and_balance(tiny_llama: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    good = [_kto(i, i % 2 == 0) for i in range(10)]
    assert validate(good, tok, 512, 4, "kto") == good
    with pytest.raises(DataError) as err:
        validate([*good, _kto(0, True), _kto(11, True, "word " * 400)], tok, 256, 4, "kto")
    lines = dict(err.value.problems)
    assert "duplicate of line 1" in lines[1] or "duplicate of line 1" in str(err.value)
    assert "over max_length 256" in str(err.value)
    with pytest.raises(DataError, match="fewer than the minimum 20"):
        validate(good, tok, 512, 20, "kto")
    lopsided = [_kto(i, True) for i in range(19)] + [_kto(19, False)]
    with pytest.raises(DataError, match="class balance: 19 desirable and 1 undesirable"):
        validate(lopsided, tok, 512, 4, "kto")
    pair = PreferenceRow([{"role": "user", "content": "q"}], chosen="a", rejected="b")
    with pytest.raises(DataError, match="a dpo row; kto needs completion and label"):
        validate([pair], tok, 512, 1, "kto")
    long = _kto(12, True, "word " * 400)
    long.meta = {"answer_ids": ["ans-x"]}  # a row from feedback has no file line: named so
    with pytest.raises(DataError, match=r"over max_length 256 \(answer ans-x\)"):
        validate([*good, long], tok, 256, 4, "kto")
    flipped = _kto(0, False)  # the same answer to the same question, rated the other way
    with pytest.raises(DataError, match="contradicts line 1"):
        validate([*good, flipped], tok, 512, 4, "kto")
    swapped = PreferenceRow(pair.prompt, chosen="b", rejected="a", meta={"line": 2})
    with pytest.raises(DataError, match="contradicts line 1"):
        validate(
            [PreferenceRow(pair.prompt, chosen="a", rejected="b", meta={"line": 1}), swapped],
            tok,
            512,
            1,
            "dpo",
        )


def test_rows_served_with_another_template_are_left_out(tiny_llama: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from tuner.preference_data import prompt_ids
    from tuner.prepare import prepare_preferences

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    rows = [_kto(i, i % 2 == 0) for i in range(12)]
    for i, row in enumerate(rows):
        row.meta["prompt_tokens"] = len(prompt_ids(tok, row.prompt)) + (7 if i < 2 else 0)
    recipe = Recipe(
        name="p",
        method="kto",
        datasets=[{"feedback": {}}],
        min_examples=4,
        hyperparameters={"val_fraction": 0.0},
    )
    prepare_preferences(
        recipe,
        tmp_path,
        files_dir=tmp_path,
        tokenizer=tok,
        feedback=lambda spec, r: (rows, {"feedback_ids": [], "skipped": {}}),
    )
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["skipped"] == {"served with another tokenizer or chat template": 2}
    assert manifest["train"] + manifest["test"] == 10


def test_kto_weights_bring_the_classes_into_the_recommended_ratio() -> None:
    for up, down in ((30, 10), (10, 30), (20, 20), (5, 45)):
        rows = [_kto(i, True) for i in range(up)] + [_kto(up + i, False) for i in range(down)]
        d, u = kto_weights(rows)
        assert 1.0 <= (up * d) / (down * u) <= 4 / 3 + 1e-9, (up, down, d, u)


def test_the_held_out_split_never_shares_a_prompt_with_training() -> None:
    rows = [_kto(i // 3, i % 2 == 0, f"answer {i}") for i in range(60)]  # 3 rows per prompt
    train, val, test = split(rows, 0.1, 0.25, seed=3)
    assert len(train) + len(val) + len(test) == 60 and len(test) == 15
    prompts = [{json.dumps(r.prompt) for r in part} for part in (train, val, test)]
    assert not (prompts[0] & prompts[2]) and not (prompts[0] & prompts[1])


def test_recipes_refuse_what_preference_methods_cannot_train_on() -> None:
    base = {"name": "p", "method": "dpo", "datasets": [{"feedback": {}}]}
    assert Recipe(**base).preference.beta == 0.1
    for change, named in (
        ({"datasets": [{"synthetic": {"kind": "qa"}}]}, "synthetic"),
        ({"datasets": [{"feedback": {}, "format": "chat"}]}, "format"),
        ({"datasets": [{"feedback": {"since": "yesterday"}}]}, "since"),
        ({"preference": {"held_out": 1.0}}, "held_out"),
        ({"preference": {"beta": 0}}, "beta"),
        ({"method": "lora"}, "feedback"),
        ({"method": "lora", "datasets": [{"path": "x"}], "parent": "promoted"}, "parent"),
        ({"datasets": [{"feedback": {}, "path": "x"}]}, "exactly one"),
        ({"method": "kto", "hyperparameters": {"batch_size": 1}}, "batch_size"),
        ({"preference": {"held_out": 0.6}, "hyperparameters": {"val_fraction": 0.5}}, "held_out"),
        ({"hyperparameters": {"test_fraction": 0.1}}, "test_fraction"),
        ({"hyperparameters": {"early_stopping_patience": 2}}, "early_stopping"),
    ):
        with pytest.raises(ValueError, match=named):
            Recipe(**{**base, **change})


def test_cut_names_the_sides_a_token_limit_cut_and_survives_a_round_trip(
    tmp_path: Path,
) -> None:
    bad = _write(
        tmp_path / "bad.jsonl",
        [
            {"prompt": "q1", "chosen": "a", "rejected": "b", "cut": ["completion"]},
            {"prompt": "q2", "completion": "a", "label": True, "cut": "completion"},
        ],
    )
    with pytest.raises(DataError) as err:
        read_jsonl(bad)
    lines = dict(err.value.problems)
    assert "field 'cut'" in lines[1] and "['chosen', 'rejected']" in lines[1]
    assert "field 'cut'" in lines[2]

    rows = [PreferenceRow([{"role": "user", "content": "q"}], chosen="a [1]", rejected="a")]
    rows[0].cut = ("rejected",)
    path = tmp_path / "out.jsonl"
    write_jsonl(rows, path)
    (back,) = read_jsonl(path)
    assert back.cut == ("rejected",)
    assert back.trl_columns()["rejected_cut"] and not back.trl_columns()["chosen_cut"]
    assert "cut" not in back.to_trl()  # TRL sees its own row shape


def test_closing_is_the_end_of_turn_the_template_adds(tiny_llama: Path) -> None:
    from transformers import AutoTokenizer

    from tuner.data import render

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    end = closing(tok)
    assert end, "the tiny model's chat template closes assistant turns"
    turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "an answer"}]
    whole, cut = render(tok, turns, prompt=False), render(tok, turns, prompt=False, cut=True)
    assert whole == cut + end

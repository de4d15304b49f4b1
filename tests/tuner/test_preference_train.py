"""kto and dpo train a LoRA on TRL's trainers: the tuned model moves toward the chosen answers
(held-out reward accuracy above chance), the record names its parent and the feedback it used,
a continued parent is the reference, and cancel and resume go through the hooks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tuner.config import Recipe
from tuner.hooks import Cancelled
from tuner.prepare import prepare_preferences
from tuner.registry import Registry
from tuner.train import train

pytestmark = pytest.mark.slow

QUESTIONS = [f"question number {i} about apt ?" for i in range(24)]
GOOD = " the answer is apt [1] ."
BAD = " no idea ."


def _prompt(q: str) -> list[dict[str, str]]:
    return [
        {
            "role": "system",
            "content": "[1] <<<PASSAGE source=d1\napt installs packages\nPASSAGE>>>",
        },
        {"role": "user", "content": q},
    ]


def _file(folder: Path, kind: str) -> Path:
    path = folder / f"{kind}.jsonl"
    folder.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for i, q in enumerate(QUESTIONS):
            if kind == "dpo":
                row: dict[str, Any] = {"prompt": _prompt(q), "chosen": GOOD, "rejected": BAD}
            else:
                row = {"prompt": _prompt(q), "completion": GOOD if i % 2 else BAD,
                       "label": "up" if i % 2 else "down"}  # fmt: skip
            row["meta"] = {"feedback_ids": [f"ans-{i}:k"]}
            f.write(json.dumps(row) + "\n")
    return path


def _recipe(tiny: Path, data: Path, method: str, **extra: Any) -> Recipe:
    return Recipe(
        name=f"pref-{method}",
        method=method,
        base_model=str(tiny),
        datasets=[{"path": str(data)}],
        hyperparameters={
            "learning_rate": 5e-3,
            "batch_size": 4,
            "max_steps": 10,
            "val_fraction": 0.0,
            "dropout": 0.0,
            "checkpoint_every": 4,
            "seed": 1,
            "max_length": 256,
        },
        preference={"beta": 0.1, "held_out": 0.25},
        probe=False,
        min_examples=8,
        **extra,
    )


def _prepare(recipe: Recipe, job: Path, tiny: Path) -> Path:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    prepare_preferences(recipe, job, files_dir=job / "files", tokenizer=tok)
    return job


@pytest.mark.parametrize(("method", "sft_weight"), [("dpo", 0.0), ("dpo", 1.0), ("kto", 0.0)])
def test_preference_method_trains_registers_and_wins_held_out(
    method: str, sft_weight: float, tiny_llama: Path, tmp_path: Path
) -> None:
    recipe = _recipe(tiny_llama, _file(tmp_path / "in", method), method)
    recipe.preference.sft_weight = sft_weight
    job = _prepare(recipe, tmp_path / "job", tiny_llama)
    manifest = json.loads((job / "data" / "manifest.json").read_text())
    assert manifest["test"] == 6 and manifest["kind"] == method
    record = train(recipe, job, data_dir=tmp_path / "data", device="cpu")
    assert record.method == method and record.servable
    reward = record.metrics["reward"]
    assert reward["rows"] == 6
    assert reward["accuracy"] > 0.5, reward  # moved toward the desirable answers
    assert record.metrics["updates"] == 10
    if sft_weight:  # the chosen answer's NLL (a random tiny model: several nats) joins the loss
        assert record.metrics["first_loss"] > 1.5
    else:
        assert record.metrics["first_loss"] < 1.0  # log 2 for dpo, about it for kto
    folder = Registry(tmp_path / "data" / "adapters").folder(record.id)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert not (folder / "ref").exists()  # TRL's frozen reference copy is not saved
    assert not (job / "checkpoints").exists()


def test_a_child_continues_its_parent_and_records_the_chain(
    tiny_llama: Path, tmp_path: Path
) -> None:
    data = _file(tmp_path / "in", "dpo")
    first = _recipe(tiny_llama, data, "dpo")
    parent = train(first, _prepare(first, tmp_path / "j1", tiny_llama), data_dir=tmp_path / "d")
    child_recipe = _recipe(tiny_llama, data, "dpo", parent=parent.id)
    child = train(
        child_recipe, _prepare(child_recipe, tmp_path / "j2", tiny_llama), data_dir=tmp_path / "d"
    )
    assert child.parent == parent.id and child.lineage == [parent.id, child.id]
    assert child.metrics["reward"]["accuracy"] > 0.5
    assert len(child.feedback_ids) == len(QUESTIONS)  # the file rows' own lineage is kept


def test_the_reference_of_a_continued_adapter_is_its_parent(
    tiny_llama: Path, tmp_path: Path
) -> None:
    """Before any update, a child scores every held-out row with margin 0 against its reference:
    TRL's frozen copy of the parent (against the base model the parent's gain would show)."""
    from tuner import preference_train as pt
    from tuner.models import load_generator

    data = _file(tmp_path / "in", "dpo")
    first = _recipe(tiny_llama, data, "dpo")
    job = _prepare(first, tmp_path / "j1", tiny_llama)
    parent = train(first, job, data_dir=tmp_path / "d", device="cpu")
    assert parent.metrics["reward"]["mean_margin"] > 0  # the parent moved away from the base
    gen = load_generator(str(tiny_llama), cache_dir=tmp_path / "models")
    folder = Registry(tmp_path / "d" / "adapters").folder(parent.id)
    model = pt._wrap(gen.model, first, folder)
    rows = pt._rows(job / "data" / "train.jsonl")
    trainer = pt._trainer(first, model, gen.tokenizer, rows, [], tmp_path / "j2", True, None)
    policy = trainer.accelerator.unwrap_model(trainer.model)
    assert "ref" in policy.peft_config
    start = pt.reward_accuracy(policy.eval(), gen.tokenizer, pt._rows(job / "data" / "test.jsonl"))
    assert start["mean_margin"] == 0.0 and start["accuracy"] == 0.5


class _StopAt:
    def __init__(self, step: int) -> None:
        self.step, self.seen = step, 0

    def progress(self, step: int, total: int, loss: float, val_loss: float | None) -> None:
        self.seen = step

    def should_stop(self) -> bool:
        return self.seen >= self.step


def test_cancel_stops_and_registers_nothing_then_resume_finishes(
    tiny_llama: Path, tmp_path: Path
) -> None:
    recipe = _recipe(tiny_llama, _file(tmp_path / "in", "dpo"), "dpo")
    job = _prepare(recipe, tmp_path / "job", tiny_llama)
    with pytest.raises(Cancelled):
        train(recipe, job, data_dir=tmp_path / "d", hooks=_StopAt(5))
    assert Registry(tmp_path / "d" / "adapters").list() == []
    whole = sorted(p.parent.name for p in (job / "checkpoints").glob("*/whole.json"))
    assert whole == ["checkpoint-4"]
    seen: list[int] = []

    class Count(_StopAt):
        def progress(self, step: int, total: int, loss: float, val_loss: float | None) -> None:
            seen.append(step)

    record = train(recipe, job, data_dir=tmp_path / "d", hooks=Count(10**9))
    assert seen[0] == 5 and seen[-1] == 10  # went on from update 4
    assert record.metrics["updates"] == 10


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_a_completion_a_token_limit_cut_trains_without_its_end_of_turn(
    method: str, tiny_llama: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuner import preference_data as pdata
    from tuner.preference_train import _trainer, _wrap, completion_logp

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    end = pdata.closing(tok)
    rows = []
    for i, q in enumerate(QUESTIONS[:8]):
        if method == "dpo":
            row = pdata.PreferenceRow(_prompt(q), chosen=GOOD, rejected=BAD)
            row.cut = ("rejected",) if i % 2 else ()
        else:
            row = pdata.PreferenceRow(_prompt(q), GOOD if i % 2 else BAD, bool(i % 2))
            row.cut = ("completion",) if i % 4 < 2 else ()
        rows.append(row)
    recipe = _recipe(tiny_llama, tmp_path / "unused.jsonl", method)
    model = _wrap(AutoModelForCausalLM.from_pretrained(tiny_llama), recipe, None)
    trainer = _trainer(recipe, model, tok, rows, [], tmp_path / "job", True, None)
    data = trainer.train_dataset
    assert len(data) == len(rows)
    for row, example in zip(rows, data, strict=True):
        for side in row.sides():
            ids = example[f"{side}_ids"]
            assert (ids[-len(end) :] == end) is (side not in row.cut), (side, row.cut)
    if method == "kto":  # the KL completions are the opened completions, rotated per batch
        size = recipe.hyperparameters.batch_size
        completions = data["completion_ids"]
        for start in range(0, len(data), size):
            batch = completions[start : start + size]
            assert data["KL_completion_ids"][start : start + size] == [batch[-1], *batch[:-1]]

    # The reward's log-probability leaves the end of turn out the same way.
    closed = completion_logp(model, tok, _prompt(QUESTIONS[0]), BAD)
    opened = completion_logp(model, tok, _prompt(QUESTIONS[0]), BAD, cut=True)
    assert opened > closed  # the closed one adds the end of turn's (negative) log-probability

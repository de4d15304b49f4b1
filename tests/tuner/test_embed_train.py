"""A few steps of embedder training change the embeddings and raise a toy recall."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import tiny_st_model as _tiny_st
from tuner.embed_train import ir_evaluator, train_embedder
from tuner.pairs import Pair

# query word -> its passage; passages share no words, so a trained model can tell them apart
PAIRS = [
    Pair(q, f"{a} {b} {c}")
    for q, a, b, c in [
        ("apt", "package", "install", "archive"),
        ("grub", "boot", "menu", "disk"),
        ("bash", "shell", "login", "user"),
        ("dpkg", "file", "mirror", "kernel"),
    ]
]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_training_changes_embeddings_and_raises_toy_recall(method: str, tmp_path: Path) -> None:
    model = _tiny_st(tmp_path / "st")
    before_vec = model.encode(["apt"])
    train = PAIRS * 8
    result = train_embedder(
        model,
        train,
        PAIRS,
        out_dir=tmp_path / "out",
        method=method,
        learning_rate=5e-3 if method == "full" else 5e-2,
        batch_size=4,
        max_steps=40,
    )
    assert (abs(model.encode(["apt"]) - before_vec)).max() > 1e-3
    before = [v for k, v in result["before"].items() if k.endswith("accuracy@1")][0]
    after = [v for k, v in result["after"].items() if k.endswith("accuracy@1")][0]
    assert after > before and after >= 0.75, (before, after)


def test_evaluator_puts_negatives_in_the_corpus() -> None:
    ev = ir_evaluator([Pair("q", "right", ["wrong one", "wrong two"])])
    assert len(ev.corpus) == 3 and len(ev.queries) == 1

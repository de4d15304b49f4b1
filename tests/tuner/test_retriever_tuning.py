"""The retriever tuner end to end below HTTP: recipe, pairs and hard negatives from a small
index, training through the job entry point, the registry record (component, lineage), and
reloading the saved embedder exactly."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from retriever.embedder import load_embedder, load_tuned_embedder
from retriever.index import DocumentIn, Retriever
from tests.fakes import FakeEmbedder
from tests.helpers import ST_WORDS as WORDS
from tests.helpers import tiny_st_model as _tiny_st
from tuner.config import recipe_from_dict
from tuner.data import DataError
from tuner.hooks import Cancelled
from tuner.prepare import prepare_pairs
from tuner.registry import Registry, RegistryError
from tuner.train import train

# Every sentence is made of the tiny model's words, so its tokenizer sees no [UNK].
DOCS = {
    f"d{i}": f"{a} {b} {c} {d}. {b} {c} {a} {e} {f}. {c} {a} {f} {d} {e}."
    for i, (a, b, c, d, e, f) in enumerate(
        [WORDS[(i + j * 3) % len(WORDS)] for j in range(6)] for i in range(12)
    )
}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-st")
    _tiny_st(folder / "bert").save(str(folder / "st"))
    return folder / "st"


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Retriever]:
    r = Retriever(tmp_path / "index", FakeEmbedder())
    r.upsert_many([DocumentIn(text, doc_id) for doc_id, text in DOCS.items()])
    yield r
    r.close()


def _recipe(base: Path, **extra: object):
    body = {
        "name": "emb",
        "component": "retriever",
        "method": "full",
        "base_model": str(base),
        "datasets": [{"synthetic": {"kind": "pairs", "max_examples": 50}}],
        "hyperparameters": {"max_steps": 3, "batch_size": 4, "val_fraction": 0.25},
        "retriever": {"negatives": 2, "window": [0, 10]},
        "min_examples": 4,
        **extra,
    }
    return recipe_from_dict(body)


def test_retriever_recipes_are_checked_by_name(base: Path) -> None:
    recipe = _recipe(base)
    assert recipe.hyperparameters.learning_rate == 2e-5 and recipe.retriever.window == (0, 10)
    assert _recipe(base, method="lora").hyperparameters.learning_rate == 1e-4
    for extra, words in (
        ({"method": "ia3"}, "for the retriever"),
        ({"retriever": {"window": [5, 2]}}, "retriever.window"),
        ({"retriever": {"mine_mode": "magic"}}, "retriever.mine_mode"),
        ({"parent": "x-v1", "method": "lora"}, "parent"),
        ({"datasets": [{"synthetic": {"kind": "qa"}}]}, "'pairs' for the retriever"),
        ({"datasets": [{"synthetic": {"kind": "pairs", "generator": "model"}}]}, "extractive"),
    ):
        with pytest.raises(ValueError, match=words):
            _recipe(base, **extra)
    with pytest.raises(ValueError, match="pairs train the retriever"):
        recipe_from_dict({"name": "g", "datasets": [{"synthetic": {"kind": "pairs"}}]})


def test_prepare_pairs_mines_negatives_and_holds_out_a_split(
    base: Path, index: Retriever, tmp_path: Path
) -> None:
    prepared = prepare_pairs(_recipe(base), tmp_path / "job", files_dir=tmp_path, retriever=index)
    data = tmp_path / "job" / "data"
    train = [json.loads(x) for x in (data / "train.jsonl").read_text().splitlines()]
    val = [json.loads(x) for x in (data / "val.jsonl").read_text().splitlines()]
    assert (prepared.train, prepared.val) == (len(train), len(val)) == (9, 3)
    assert {r["query"] for r in train}.isdisjoint(r["query"] for r in val)
    for row in train + val:
        assert row["negatives"] and row["positive"] not in row["negatives"]
        assert row["query"] in DOCS[row["doc_id"]]
    assert prepared.source_documents == dict.fromkeys(DOCS, 1)
    assert json.loads((data / "manifest.json").read_text())["negatives_mean"] > 0


def test_pair_files_keep_their_negatives_and_too_few_pairs_are_refused(
    base: Path, index: Retriever, tmp_path: Path
) -> None:
    rows = [{"query": f"q {w}", "positive": f"p {w}", "negatives": [f"n {w}"]} for w in WORDS]
    given = {r["query"]: r["negatives"] for r in rows}
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    recipe = _recipe(base, datasets=[{"path": str(path)}])
    prepare_pairs(recipe, tmp_path / "job", files_dir=tmp_path, retriever=index)
    written = (tmp_path / "job" / "data" / "train.jsonl").read_text().splitlines()
    rows_out = [json.loads(x) for x in written]
    assert rows_out and all(given[r["query"]] == r["negatives"] for r in rows_out)
    path.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n")
    with pytest.raises(DataError, match="at least 4"):
        prepare_pairs(recipe, tmp_path / "job2", files_dir=tmp_path, retriever=index)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_job_trains_registers_and_reloads_the_embedder(
    method: str, base: Path, index: Retriever, tmp_path: Path
) -> None:
    hp = {"max_steps": 3, "batch_size": 4, "val_fraction": 0.25, "learning_rate": 1e-2}
    recipe = _recipe(base, method=method, hyperparameters=hp)
    job = tmp_path / "job"
    prepare_pairs(recipe, job, files_dir=tmp_path, retriever=index)
    record = train(recipe, job, data_dir=tmp_path, device="cpu")
    registry = Registry(tmp_path / "adapters")
    assert registry.get(record.id).component == "retriever" and not record.servable
    assert record.metrics["updates"] == 3 and record.metrics["recall@10_after"] is not None
    assert record.metrics["trained_languages"] == ["en"]
    with pytest.raises(RegistryError, match="re-embedding"):
        registry.promote(record.id)
    tuned = load_tuned_embedder(
        registry.folder(record.id), record.id, method=method, base=str(base)
    )
    plain = load_embedder(str(base))
    texts = ["apt grub kernel", "bash shell login"]
    assert np.abs(tuned.encode(texts) - plain.encode(texts)).max() > 1e-4  # it learned
    assert tuned.identity["adapter"] == record.id and tuned.identity != plain.identity
    again = load_tuned_embedder(
        registry.folder(record.id), record.id, method=method, base=str(base)
    )
    assert np.allclose(again.encode(texts), tuned.encode(texts), atol=1e-6)


def test_a_child_continues_from_its_parent_with_lineage(
    base: Path, index: Retriever, tmp_path: Path
) -> None:
    first = _recipe(base)
    prepare_pairs(first, tmp_path / "j1", files_dir=tmp_path, retriever=index)
    parent = train(first, tmp_path / "j1", data_dir=tmp_path, device="cpu")
    child_recipe = _recipe(base, parent=parent.id)
    prepare_pairs(child_recipe, tmp_path / "j2", files_dir=tmp_path, retriever=index)
    child = train(child_recipe, tmp_path / "j2", data_dir=tmp_path, device="cpu")
    assert child.lineage == [parent.id, child.id] and child.base_model == str(base)


def test_a_stop_request_cancels_training_without_saving(
    base: Path, index: Retriever, tmp_path: Path
) -> None:
    class StopAtOnce:
        steps: list[int] = []

        def progress(self, step: int, total: int, loss: float, val: float | None) -> None:
            self.steps.append(step)

        def should_stop(self) -> bool:
            return True

    recipe = _recipe(base, hyperparameters={"max_steps": 50, "batch_size": 4})
    prepare_pairs(recipe, tmp_path / "job", files_dir=tmp_path, retriever=index)
    hooks = StopAtOnce()
    with pytest.raises(Cancelled):
        train(recipe, tmp_path / "job", data_dir=tmp_path, device="cpu", hooks=hooks)
    assert hooks.steps == [1] and Registry(tmp_path / "adapters").list() == []

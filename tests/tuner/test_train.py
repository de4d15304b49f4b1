"""Every method trains on a memorisable toy set with falling loss, lands in the registry, and
reloads to change the model's output; an interrupted run resumes where it stopped."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import chat_jsonl
from tuner.config import Recipe
from tuner.prepare import prepare
from tuner.train import train

TOY = [
    ("what is the capital of france ?", "paris is the capital of france ."),
    ("what is debian ?", "debian is a linux system ."),
    ("how to install a package ?", "apt install the package ."),
    ("who is the user ?", "the user is a question ."),
    ("what is a kernel ?", "the kernel of linux ."),
    ("what is a file ?", "a file is a document ."),
    ("why apt ?", "apt is how to install ."),
    ("what is the answer ?", "the answer is in the passage ."),
]
LR = {"lora": 3e-2, "dora": 3e-2, "ia3": 1e-1, "full": 1e-2}


def _toy_file(folder: Path) -> Path:
    return chat_jsonl(folder / "toy.jsonl", TOY)


def _recipe(tiny: Path, data: Path, method: str, **hp: Any) -> Recipe:
    hyper = {
        "learning_rate": LR.get(method, 1e-1),
        "batch_size": 4,
        "max_steps": 12,
        "val_fraction": 0.0,
        "dropout": 0.0,
        "num_virtual_tokens": 4,
        "checkpoint_every": 4,
        "seed": 1,
        **hp,
    }
    return Recipe(
        name=f"toy-{method.replace('_', '-')}",
        method=method,
        base_model=str(tiny),
        datasets=[{"path": str(data)}],
        hyperparameters=hyper,
        probe=False,
        min_examples=4,
    )


def _prepared(recipe: Recipe, job: Path, tiny: Path) -> Path:
    from transformers import AutoTokenizer

    prepare(recipe, job, files_dir=job / "files", tokenizer=AutoTokenizer.from_pretrained(tiny))
    return job


def _logits(model: Any, tok: Any) -> torch.Tensor:
    ids = tok.apply_chat_template(
        [{"role": "user", "content": TOY[0][0]}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    with torch.inference_mode():
        return model(input_ids=ids).logits[0, -1]


@pytest.mark.parametrize(
    "method", ["lora", "dora", "ia3", "prefix_tuning", "prompt_tuning", "p_tuning", "full"]
)
def test_method_trains_saves_and_reloads(method: str, tiny_llama: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = _recipe(tiny_llama, _toy_file(tmp_path), method)
    job = _prepared(recipe, tmp_path / "job", tiny_llama)
    record = train(recipe, job, data_dir=tmp_path / "data", device="cpu")
    curve = [loss for _, loss in record.metrics["loss_curve"]]
    assert len(curve) == 12 and all(math.isfinite(x) for x in curve)
    assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3, curve  # it learns the toy set
    folder = tmp_path / "data" / "adapters" / record.id
    assert record.id == f"{recipe.name}-v1" and folder.is_dir()
    assert not list(folder.glob("*.bin")) and list(folder.glob("*.safetensors"))
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    before = _logits(base, tok)
    if method == "full":
        tuned = AutoModelForCausalLM.from_pretrained(folder)
    else:
        tuned = PeftModel.from_pretrained(base, str(folder))
    assert not torch.allclose(_logits(tuned, tok), before, atol=1e-4)
    assert not (job / "checkpoints").exists()  # cleaned up after success


class _Crash:
    def __init__(self, at: int) -> None:
        self.at, self.steps = at, []

    def progress(self, step: int, total: int, loss: float, val_loss: float | None) -> None:
        self.steps.append(step)
        if step == self.at:
            raise RuntimeError("simulated crash")

    def should_stop(self) -> bool:
        return False


def test_an_interrupted_run_resumes_from_its_checkpoint_to_the_same_weights(
    tiny_llama: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    data = _toy_file(tmp_path)
    recipe = _recipe(tiny_llama, data, "lora", max_steps=10, checkpoint_every=4)
    whole = train(recipe, _prepared(recipe, tmp_path / "a", tiny_llama), data_dir=tmp_path / "d1")
    job = _prepared(recipe, tmp_path / "b", tiny_llama)
    crash = _Crash(at=6)
    with pytest.raises(RuntimeError, match="simulated"):
        train(recipe, job, data_dir=tmp_path / "d2", hooks=crash)
    assert (job / "checkpoints" / "latest.json").is_file()
    again = _Crash(at=-1)
    resumed = train(recipe, job, data_dir=tmp_path / "d2", hooks=again)
    assert again.steps == [5, 6, 7, 8, 9, 10]  # the checkpoint was at update 4
    a = load_file(str(tmp_path / "d1" / "adapters" / whole.id / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "d2" / "adapters" / resumed.id / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)


class _StopAt(_Crash):
    def progress(self, step: int, total: int, loss: float, val_loss: float | None) -> None:
        self.steps.append(step)

    def should_stop(self) -> bool:
        return bool(self.steps) and self.steps[-1] >= self.at


def test_should_stop_cancels_and_nothing_is_registered(tiny_llama: Path, tmp_path: Path) -> None:
    from tuner.hooks import Cancelled

    recipe = _recipe(tiny_llama, _toy_file(tmp_path), "lora")
    job = _prepared(recipe, tmp_path / "job", tiny_llama)
    with pytest.raises(Cancelled):
        train(recipe, job, data_dir=tmp_path / "data", hooks=_StopAt(3))
    assert not list((tmp_path / "data" / "adapters").glob("toy-*"))


def test_early_stopping_keeps_the_best_validation_weights(tiny_llama: Path, tmp_path: Path) -> None:
    recipe = _recipe(
        tiny_llama,
        _toy_file(tmp_path),
        "lora",
        learning_rate=0.5,  # too high on purpose: validation loss soon rises
        max_steps=40,
        val_fraction=0.25,
        eval_every=1,
        early_stopping_patience=2,
    )
    record = train(recipe, _prepared(recipe, tmp_path / "job", tiny_llama), data_dir=tmp_path / "d")
    m = record.metrics
    vals = [v for _, v in m["val_curve"]]
    assert m["stopped_early"] and m["updates"] < 40
    assert m["best_val_loss"] == min(vals)


def test_sequential_tuning_continues_the_parent_and_records_the_chain(
    tiny_llama: Path, tmp_path: Path
) -> None:
    from tuner.registry import Registry

    data = _toy_file(tmp_path)
    first = _recipe(tiny_llama, data, "lora", max_steps=10)
    parent = train(first, _prepared(first, tmp_path / "j1", tiny_llama), data_dir=tmp_path / "d")
    child_recipe = _recipe(tiny_llama, data, "lora", max_steps=2)
    child_recipe.name, child_recipe.parent = "toy-child", parent.id
    child = train(
        child_recipe, _prepared(child_recipe, tmp_path / "j2", tiny_llama), data_dir=tmp_path / "d"
    )
    fresh_recipe = _recipe(tiny_llama, data, "lora", max_steps=2)
    fresh = train(
        fresh_recipe, _prepared(fresh_recipe, tmp_path / "j3", tiny_llama), data_dir=tmp_path / "e"
    )
    assert child.parent == parent.id and child.lineage == [parent.id, child.id]
    assert [r.id for r in Registry(tmp_path / "d" / "adapters").lineage(child.id)] == [
        parent.id,
        child.id,
    ]
    end = parent.metrics["train_loss"]  # the child starts where the parent ended
    assert abs(child.metrics["first_loss"] - end) < abs(fresh.metrics["first_loss"] - end) / 5


def test_datasets_mix_by_weight(tiny_llama: Path, tmp_path: Path) -> None:
    from tuner.data import read_jsonl

    data = _toy_file(tmp_path)
    other = tmp_path / "other.jsonl"
    other.write_text(
        "".join(
            json.dumps({"prompt": f"what is {w} ?", "completion": f"{w} is a file ."}) + "\n"
            for w in ("apt", "linux", "kernel", "debian")
        )
    )
    recipe = _recipe(tiny_llama, data, "lora")
    recipe.datasets[0].weight = 1.0
    from tuner.config import DataSpec

    recipe.datasets.append(DataSpec(path=str(other), weight=3.0))
    job = _prepared(recipe, tmp_path / "job", tiny_llama)
    train_set = read_jsonl(job / "data" / "train.jsonl", format="chat")
    from_other = sum("is a file ." in e.messages[-1]["content"] for e in train_set)
    assert from_other / len(train_set) == pytest.approx(0.75, abs=0.1)
    manifest = json.loads((job / "data" / "manifest.json").read_text())
    assert len(manifest["dataset_hashes"]) == 2

"""The real default generator (SmolLM2-135M) fine-tunes with LoRA for a few steps."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.tuner.test_train import _logits, _toy_file
from tuner.config import Recipe
from tuner.train import train


@pytest.mark.slow
def test_lora_on_the_default_generator(tmp_path: Path) -> None:
    from peft import PeftModel

    from tuner.models import DEFAULT_GENERATOR, load_generator

    data = tmp_path / "data"
    gen = load_generator(DEFAULT_GENERATOR, cache_dir=data / "models", offline=True)
    recipe = Recipe(
        name="smol-lora",
        method="lora",
        datasets=[{"path": str(_toy_file(tmp_path))}],
        hyperparameters={
            "learning_rate": 1e-3,
            "batch_size": 2,
            "max_steps": 3,
            "val_fraction": 0.0,
            "target_modules": ["q_proj", "v_proj"],
        },
        probe=False,
        min_examples=4,
    )
    job = tmp_path / "job"
    from tuner.prepare import prepare

    prepare(recipe, job, files_dir=tmp_path / "files", tokenizer=gen.tokenizer)
    record = train(recipe, job, data_dir=data, device="cpu")
    curve = [loss for _, loss in record.metrics["loss_curve"]]
    assert len(curve) == 3 and all(math.isfinite(x) for x in curve)
    before = _logits(gen.model, gen.tokenizer)
    tuned = PeftModel.from_pretrained(gen.model, str(data / "adapters" / record.id))
    assert not torch.allclose(_logits(tuned, gen.tokenizer), before, atol=1e-4)

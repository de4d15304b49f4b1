"""The forgetting probe: its packaged set, finite scores on the tiny model, the forgetting flag."""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path

import pytest

from tuner import probe
from tuner.probe import ProbeItem, compare, probe_set, score


def test_probe_set_is_package_data_and_general() -> None:
    text = resources.files("tuner").joinpath("probe_set.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert len(rows) == len(probe_set()) == 40
    assert all(r["question"].strip() and r["answer"].strip() for r in rows)
    assert len({r["question"] for r in rows}) == 40
    assert not any(w in text.lower() for w in ("debian", "linux", "apt-get", "dpkg"))


def test_answers_match_as_whole_words() -> None:
    item = ProbeItem("How many days are there in a week?", "7", ("seven",))
    assert item.accepts("A week has 7 days.")
    assert item.accepts("SEVEN days")
    assert not item.accepts("There are 17 of them")
    assert ProbeItem("q", "the Pacific Ocean", ("Pacific",)).accepts("It is the\n pacific.")


@pytest.fixture(scope="module")
def tiny(tiny_llama: Path):  # noqa: ANN201 - (model, tokenizer)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    model.eval()
    return model, AutoTokenizer.from_pretrained(tiny_llama)


def test_scores_are_finite_and_do_not_depend_on_batching(tiny) -> None:  # noqa: ANN001
    model, tok = tiny
    one = score(model, tok, batch_size=40)
    assert one["probe_n"] == 40
    assert math.isfinite(one["probe_nll"]) and one["probe_nll"] > 0
    assert 0.0 <= one["probe_accuracy"] <= 1.0
    small = score(model, tok, batch_size=3)  # padding must not change the numbers
    assert small["probe_nll"] == pytest.approx(one["probe_nll"], rel=1e-4)
    assert small["probe_accuracy"] == one["probe_accuracy"]
    with pytest.raises(ValueError, match="batch_size"):
        score(model, tok, batch_size=0)


def test_prompt_tuned_peft_model_scores(tiny) -> None:  # noqa: ANN001
    """Prompt tuning prepends virtual tokens to the logits; the probe drops them."""
    import copy

    from peft import PromptTuningConfig, TaskType, get_peft_model

    model, tok = tiny
    peft_model = get_peft_model(
        copy.deepcopy(model), PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4)
    )
    peft_model.eval()
    out = score(peft_model, tok, batch_size=16)
    assert math.isfinite(out["probe_nll"]) and out["probe_n"] == 40


def test_compare_flags_forgetting() -> None:
    before = {"probe_nll": 2.0, "probe_accuracy": 0.6, "probe_n": 40}
    same = compare(before, dict(before))
    assert same["probe_nll_delta"] == 0 and not same["forgetting"]
    slight = compare(before, {"probe_nll": 2.2, "probe_accuracy": 0.5, "probe_n": 40})
    assert not slight["forgetting"]  # exactly 10% and exactly 0.1 are not over the line
    assert slight["probe_nll_delta"] == pytest.approx(0.2)
    assert slight["probe_accuracy_delta"] == pytest.approx(-0.1)
    nll_up = compare(before, {"probe_nll": 2.3, "probe_accuracy": 0.6, "probe_n": 40})
    assert nll_up["forgetting"] and "NLL" in nll_up["forgetting_reasons"][0]
    acc_down = compare(before, {"probe_nll": 1.9, "probe_accuracy": 0.45, "probe_n": 40})
    assert acc_down["forgetting"] and "accuracy" in acc_down["forgetting_reasons"][0]
    better = compare(before, {"probe_nll": 1.5, "probe_accuracy": 0.9, "probe_n": 40})
    assert not better["forgetting"] and better["probe_accuracy_delta"] == pytest.approx(0.3)
    assert probe.NLL_RISE == 0.10 and probe.ACCURACY_DROP == 0.10


@pytest.mark.slow
def test_real_default_generator_baseline(tmp_path: Path) -> None:
    """SmolLM2-135M answers the easy questions; its baseline is far from both ends."""
    from tuner.models import load_generator

    gen = load_generator(cache_dir=tmp_path / "models")
    out = score(gen.model, gen.tokenizer)
    assert 0.3 <= out["probe_accuracy"] <= 0.9
    assert 1.0 < out["probe_nll"] < 8.0

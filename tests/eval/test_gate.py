"""--gate: a preference-tuned adapter is evaluated against its parent for real (tiny models) and
promoted only when no answer metric is significantly worse and its held-out reward accuracy
beats chance; the verdict lands on its registry record either way."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from eval.config import EvalOptions
from eval.gate import MIN_HELD_OUT, GateError, run_gate, verdict
from eval.harness import run_eval


def _rows(mode: str, values: list[float], metric: str = "token_f1") -> list[dict]:
    return [
        {"query_id": f"q{i}", "mode": mode, "metrics": {metric: v}} for i, v in enumerate(values)
    ]


def _reward(per_row: list[float]) -> dict:
    return {"rows": len(per_row), "accuracy": sum(per_row) / len(per_row), "per_row": per_row}


def test_verdict_needs_no_significant_loss_and_a_held_out_win() -> None:
    opts = EvalOptions(dataset=Path("x"), resamples=1000)
    before = _rows("rag", [0.4, 0.5, 0.6, 0.5] * 10)
    same = _rows("hybrid", [0.4, 0.5, 0.6, 0.5] * 10)
    worse = _rows("hybrid", [0.1, 0.2, 0.3, 0.2] * 10)
    wins = _reward([1.0] * 18 + [0.0] * 2)
    ok = verdict(before, same, "rag", wins, opts)
    assert ok["passed"] and ok["losses"] == [] and ok["reward_accuracy"]["ci_low"] > 0.5
    lost = verdict(before, worse, "rag", wins, opts)
    assert not lost["passed"] and lost["losses"] == ["token_f1"]
    assert "significantly worse on token_f1" in lost["message"]
    chance = verdict(before, same, "rag", _reward([1.0, 0.0] * 10), opts)
    assert not chance["passed"] and "does not beat the parent's 0.5" in chance["message"]
    few = verdict(before, same, "rag", _reward([1.0] * (MIN_HELD_OUT - 1)), opts)
    assert not few["passed"] and f"at least {MIN_HELD_OUT}" in few["message"]


def _save(settings, tiny_lora: Path, name: str, per_row: list[float], parent: str | None):  # noqa: ANN001
    from tuner.registry import Registry

    return Registry(settings.data_dir / "adapters").save(
        lambda folder: shutil.copytree(tiny_lora, folder, dirs_exist_ok=True),
        name=name,
        method="dpo",
        base_model=str(settings.generator),
        metrics={"reward": _reward(per_row)},
        parent=parent,
    )


@pytest.mark.slow
def test_gate_against_the_parent_promotes_a_passing_adapter(
    eval_settings, squad_file: Path, tiny_lora: Path, tmp_path: Path
) -> None:
    from tuner.registry import Registry

    # The same weights as its parent gamma-v1: the same answers, so nothing is worse.
    record = _save(eval_settings, tiny_lora, "pref", [1.0] * 12, parent="gamma-v1")
    opts = EvalOptions(dataset=squad_file, resamples=500, max_new_tokens=4, probes=False)
    out = tmp_path / "gate"
    result = run_gate(record.id, opts, out, eval_settings, run_eval, promote=True)
    assert result["passed"] and result["promoted"], result["message"]
    assert result["parent"] == "gamma-v1 (hybrid)"
    assert result["metrics"]["token_f1"]["mean_diff"] == 0.0
    assert (out / "parent" / "results.jsonl").is_file() and (out / "results.jsonl").is_file()
    assert json.loads((out / "gate.json").read_text())["passed"] is True
    registry = Registry(eval_settings.data_dir / "adapters")
    assert registry.get(record.id).eval_gate["passed"] is True
    assert registry.promoted().id == record.id


@pytest.mark.slow
def test_a_failing_gate_is_recorded_and_blocks_promotion(
    eval_settings, squad_file: Path, tiny_lora: Path, tmp_path: Path
) -> None:
    from tuner.registry import Registry, RegistryError

    record = _save(eval_settings, tiny_lora, "worse", [0.0] * 12, parent=None)
    opts = EvalOptions(dataset=squad_file, resamples=500, max_new_tokens=4, probes=False)
    result = run_gate(record.id, opts, tmp_path / "gate", eval_settings, run_eval, promote=True)
    assert not result["passed"] and "promoted" not in result
    assert result["parent"] == "base model (rag)"  # no parent: rag on the base model
    registry = Registry(eval_settings.data_dir / "adapters")
    assert registry.get(record.id).eval_gate["passed"] is False
    with pytest.raises(RegistryError, match="eval gate failed"):
        registry.promote(record.id)
    assert registry.promoted() is None


def test_only_adapters_with_held_out_rewards_are_gated(eval_settings, tmp_path: Path) -> None:
    opts = EvalOptions(dataset=tmp_path, probes=False)
    with pytest.raises(GateError, match="no held-out reward accuracy"):
        run_gate("gamma-v1", opts, tmp_path / "g", eval_settings, run_eval)
    with pytest.raises(GateError, match="nope-v1"):
        run_gate("nope-v1", opts, tmp_path / "g", eval_settings, run_eval)

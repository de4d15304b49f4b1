"""``ragtune eval --gate ADAPTER``: a preference-tuned adapter against its parent, and promotion
only when it holds up.

The adapter and its parent answer the same questions in hybrid mode (the same passages; the
parent's weights, or the base model's in rag mode when the adapter started from the base). The
gate passes when:

- no answer metric (``ANSWER_METRICS`` present in the run) is significantly worse: the paired
  bootstrap interval of adapter - parent lies wholly below zero for none of them; and
- the adapter wins on the feedback it did not train on: its held-out reward accuracy (measured
  by the trainer, ``tuner.preference_train.reward_accuracy``; the parent scores 0.5) has a
  bootstrap interval wholly above 0.5, over at least ``MIN_HELD_OUT`` rows.

The verdict is recorded on the adapter's registry record (``eval_gate``) either way, so the
registry refuses to promote a failed one without force; ``promote`` promotes a passing one.
Writes ``gate.json`` into the run folder (and the parent's run under ``parent/`` when there is
one to run).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eval import stats
from eval.config import EvalOptions
from eval.fix import gate as paired_gate
from eval.fix import read_rows
from tuner.durable import atomic_write_text

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger(__name__)
Run = Callable[[EvalOptions, Path, Any], dict[str, Any]]
ANSWER_METRICS = (
    "token_f1",
    "rouge_l",
    "exact_match",
    "groundedness",
    "citation_precision",
    "valid_marker",
)
MIN_HELD_OUT = 10  # held-out rows below which reward accuracy cannot pass


class GateError(ValueError):
    """The adapter cannot be gated (not in the registry, no reward accuracy recorded)."""


def run_gate(
    adapter_id: str,
    options: EvalOptions,
    out: Path,
    settings: Settings,
    run: Run,
    *,
    promote: bool = False,
) -> dict[str, Any]:
    """Evaluate ``adapter_id`` against its parent on ``options``' questions, record the
    verdict on its registry record (and promote it when asked and it passed); return it."""
    from service.loading import registry_from_settings
    from tuner.registry import RecordNotFound, RegistryError

    registry = registry_from_settings(settings)
    try:
        record = registry.get(adapter_id)
    except (RecordNotFound, RegistryError) as exc:
        raise GateError(f"--gate: {exc}") from None
    reward = (record.metrics or {}).get("reward")
    if record.component != "generator" or not isinstance(reward, dict):
        raise GateError(
            f"--gate: {adapter_id} has no held-out reward accuracy; the gate is for kto and "
            "dpo adapters (other adapters are gated by 'ragtune eval --fix')"
        )
    if record.parent is None:  # today's generator is the base model: rag beside hybrid
        run(replace(options, modes=("rag", "hybrid"), hybrid_adapter=adapter_id), out, settings)
        before, after = read_rows(out), read_rows(out)
        mode_before, parent_label = "rag", "base model (rag)"
    else:
        parent_out = out / "parent"
        parent_options = replace(options, modes=("hybrid",), hybrid_adapter=record.parent)
        run(parent_options, parent_out, settings)
        run(replace(options, modes=("hybrid",), hybrid_adapter=adapter_id), out, settings)
        before, after = read_rows(parent_out), read_rows(out)
        mode_before, parent_label = "hybrid", f"{record.parent} (hybrid)"
    result = verdict(before, after, mode_before, reward, options)
    result |= {"adapter": adapter_id, "parent": parent_label, "dataset": str(options.dataset)}
    atomic_write_text(out / "gate.json", json.dumps(result, indent=2) + "\n")
    details = {k: v for k, v in result.items() if k not in ("metrics",)}
    registry.set_eval_gate(adapter_id, result["passed"], details)
    if promote and result["passed"]:
        registry.promote(adapter_id)
        result["promoted"] = True
    log.info("gate %s: %s", adapter_id, result["message"])
    return result


def verdict(
    before: list[dict[str, Any]],
    after: list[dict[str, Any]],
    mode_before: str,
    reward: dict[str, Any],
    options: EvalOptions,
) -> dict[str, Any]:
    """The gate's decision from the two runs' rows and the adapter's held-out rewards."""
    metrics, losses = {}, []
    for metric in ANSWER_METRICS:
        diff = paired_gate(before, after, mode_before, "hybrid", metric, options)
        if diff is None:
            continue
        metrics[metric] = diff
        if diff["ci_high"] < 0:
            losses.append(metric)
    held = reward_interval(reward, options)
    wins = held["n"] >= MIN_HELD_OUT and held["ci_low"] is not None and held["ci_low"] > 0.5
    passed = wins and not losses
    if losses:
        why = f"significantly worse on {', '.join(losses)}"
    elif not wins:
        why = (
            f"held-out reward accuracy {held['accuracy']} (95% {held['ci_low']}-{held['ci_high']}"
            f", {held['n']} rows) does not beat the parent's 0.5"
            + (f"; needs at least {MIN_HELD_OUT} held-out rows" if held["n"] < MIN_HELD_OUT else "")
        )
    else:
        why = (
            f"no answer metric worse, held-out reward accuracy {held['accuracy']} "
            f"(95% {held['ci_low']}-{held['ci_high']}, {held['n']} rows)"
        )
    return {
        "passed": passed,
        "message": ("passed: " if passed else "failed: ") + why,
        "losses": losses,
        "metrics": metrics,
        "reward_accuracy": held,
    }


def reward_interval(reward: dict[str, Any], options: EvalOptions) -> dict[str, Any]:
    """The held-out reward accuracy with a bootstrap 95% interval over its rows."""
    per_row = [float(x) for x in reward.get("per_row") or []]
    if not per_row:
        return {"accuracy": reward.get("accuracy"), "n": 0, "ci_low": None, "ci_high": None}
    idx = stats.resample_indices(len(per_row), options.resamples, options.seed)
    found = stats.interval(per_row, idx)
    assert found is not None
    return {
        "accuracy": round(found["mean"], 4),
        "n": found["n"],
        "ci_low": round(found["ci_low"], 4),
        "ci_high": round(found["ci_high"], 4),
    }

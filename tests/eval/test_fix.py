"""--fix: the diagnosed component is tuned for real (tiny models), evaluated again, and promoted
only when the gain is significant."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.config import EvalOptions
from eval.fix import _continue, continuation, fix, gate, recipe_path
from eval.harness import run_eval


def _rows(mode: str, values: list[float], metric: str = "token_f1") -> list[dict]:
    return [
        {"query_id": f"q{i}", "mode": mode, "metrics": {metric: v}} for i, v in enumerate(values)
    ]


def test_gate_passes_only_a_significant_gain_on_the_same_questions() -> None:
    opts = EvalOptions(dataset=Path("x"), resamples=1000)
    before = _rows("rag", [0.1, 0.2, 0.3, 0.2] * 10)
    better = _rows("hybrid", [0.3, 0.4, 0.5, 0.4] * 10)
    mixed = _rows("hybrid", [0.3, 0.0, 0.5, 0.0] * 10)
    up = gate(before, better, "rag", "hybrid", "token_f1", opts)
    assert up is not None and up["better"] == "b" and up["mean_diff"] == pytest.approx(0.2)
    flat = gate(before, mixed, "rag", "hybrid", "token_f1", opts)
    assert flat is not None and flat["better"] is None
    assert gate(before, _rows("hybrid", [0.5] * 3)[:0], "rag", "hybrid", "token_f1", opts) is None
    hits = [{"query_id": "q0", "mode": "rag", "gold_in_prompt": True, "metrics": {}}]
    assert gate(hits, hits, "rag", "rag", "gold_in_prompt", opts)["mean_diff"] == 0.0


def test_shipped_recipes_are_found() -> None:
    assert recipe_path("generator").name == "raft-hybrid.yaml"
    assert recipe_path("retriever").name == "retriever-pairs.yaml"


PROSE = [  # sentences the extractive question writer can use ("What is Apt?")
    ("Apt is the tool that installs packages from the Debian archive.", "Apt"),
    ("Grub is the boot loader that shows the menu when the disk starts.", "Grub"),
    ("Bash is the login shell that most users get by default.", "Bash"),
    ("Dpkg is the low level tool that unpacks a package file.", "Dpkg"),
    ("The kernel is the core of the system that talks to the hardware.", "the kernel"),
    ("Aptitude is a text interface that manages packages and their versions.", "Aptitude"),
    ("Systemd is the init system that starts services at boot time.", "Systemd"),
    ("Sudo is a program that runs commands with the rights of another user.", "Sudo"),
]


def _prose(tmp_path: Path) -> Path:
    path = tmp_path / "prose.jsonl"
    path.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"p{i}",
                    "context": f"{c} Every Debian system has {a.lower()} installed.",
                    "question": f"What is {a}?",
                    "answers": [a],
                }
            )
            + "\n"
            for i, (c, a) in enumerate(PROSE)
        )
    )
    return path


@pytest.mark.slow
def test_generator_fix_trains_gates_and_records_without_promoting_a_non_gain(
    eval_settings, tmp_path: Path
) -> None:
    from tuner.registry import Registry

    squad_file = _prose(tmp_path)
    opts = EvalOptions(
        dataset=squad_file,
        modes=("rag",),
        resamples=300,
        max_new_tokens=6,
        probes=False,
        hybrid_adapter="gamma-v1",  # the adapter hybrid answers with now: the fix continues it
    )
    out = tmp_path / "run"
    metrics = run_eval(opts, out, eval_settings)
    metrics["diagnosis"]["weak"] = "generator"  # tiny random models fail every way; pick one
    tiny = [
        "hyperparameters.max_steps=2",
        "hyperparameters.batch_size=2",
        "hyperparameters.max_length=256",
        "min_examples=2",
        "hyperparameters.eval_every=1",
    ]
    outcome = fix(opts, out, eval_settings, metrics, run_eval, overrides={"generator": tiny})
    (step,) = outcome["steps"]
    registry = Registry(eval_settings.data_dir / "adapters")
    record = registry.get(step["adapter"])
    assert record.eval_gate is not None and record.eval_gate["passed"] is step["passed"]
    assert record.parent == "gamma-v1" and step["parent"] == "gamma-v1"
    assert record.hyperparameters["seed"] == 43  # one generation on: other examples, other order
    assert "continued from gamma-v1" in step["message"]
    assert step["against"] == "rag" and step["gate"]["n"] == len(PROSE)
    promoted = registry.promoted()
    assert (promoted is not None and promoted.id == record.id) is step["passed"]
    assert json.loads((out / "fix.json").read_text())["steps"][0]["adapter"] == record.id
    assert (out / "fix-generator" / "results.jsonl").is_file()


@pytest.mark.slow
def test_retriever_fix_trains_an_embedder_and_asks_again_through_an_index_built_with_it(
    eval_settings, tmp_path: Path
) -> None:
    from tuner.registry import Registry

    opts = EvalOptions(
        dataset=_prose(tmp_path), modes=("rag",), resamples=300, max_new_tokens=4, probes=False
    )
    out = tmp_path / "run"
    metrics = run_eval(opts, out, eval_settings)
    metrics["diagnosis"]["weak"] = "retriever"
    tiny = [
        "hyperparameters.epochs=1",
        "hyperparameters.batch_size=4",
        "min_examples=2",
        "retriever.negatives=0",
    ]
    outcome = fix(opts, out, eval_settings, metrics, run_eval, overrides={"retriever": tiny})
    (step,) = outcome["steps"]
    record = Registry(eval_settings.data_dir / "adapters").get(step["adapter"])
    assert record.component == "retriever"
    assert step["gate"]["n"] == len(PROSE)
    again = json.loads((out / "fix-retriever" / "metrics.json").read_text())
    assert again["run"]["embedder"] == record.id
    hint = f"ragtune reindex --adapter {record.id}"
    assert (hint in step["message"]) is step["passed"]


def test_nothing_to_fix_without_a_diagnosis(tmp_path: Path) -> None:
    opts = EvalOptions(dataset=tmp_path)
    outcome = fix(opts, tmp_path, None, {"diagnosis": None}, run_eval)
    assert outcome["steps"] == [] and "nothing to fix" in outcome["message"]


def test_the_fix_continues_the_adapter_in_use_only_when_its_recipe_can(
    eval_settings, tiny_lora: Path, tiny_st: Path
) -> None:
    import shutil

    from tuner.config import load_recipe
    from tuner.registry import Registry

    def plan(component: str) -> object:
        recipe = load_recipe(recipe_path(component))
        recipe.base_model = (
            eval_settings.generator if component == "generator" else eval_settings.embedder
        )
        return recipe

    def weights(folder: Path) -> None:
        shutil.copytree(tiny_lora, folder, dirs_exist_ok=True)

    registry = Registry(eval_settings.data_dir / "adapters")
    registry.save(weights, name="ia", method="ia3", base_model="other-model")
    registry.save(
        weights,
        name="emb",
        method="lora",
        component="retriever",
        base_model=eval_settings.embedder,
    )
    plain = EvalOptions(dataset=Path("x"))
    assert continuation(plain, eval_settings, plan("generator")) is None  # none named or promoted
    registry.promote("gamma-v1")
    assert continuation(plain, eval_settings, plan("generator")).id == "gamma-v1"
    named = EvalOptions(dataset=Path("x"), hybrid_adapter="ia-v1")  # another base model
    assert continuation(named, eval_settings, plan("generator")) is None
    embedder = EvalOptions(dataset=Path("x"), embedder_adapter="emb-v1")
    assert continuation(embedder, eval_settings, plan("retriever")) is None  # lora: not continued
    registry.save(
        lambda folder: shutil.copytree(tiny_st, folder, dirs_exist_ok=True),
        name="emb",
        method="full",
        component="retriever",
        base_model=eval_settings.embedder,
    )
    full = EvalOptions(dataset=Path("x"), embedder_adapter="emb-v2")
    assert continuation(full, eval_settings, plan("retriever")).id == "emb-v2"
    assert continuation(embedder, eval_settings, plan("generator")).id == "gamma-v1"

    child = plan("generator")
    _continue(child, registry.get("gamma-v1"), eval_settings)
    assert child.parent == "gamma-v1" and child.method == "lora"
    assert child.hyperparameters.seed == 43 and child.datasets[0].synthetic.seed == 43

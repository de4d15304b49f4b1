"""Sweeps: a recipe's sweep block is checked key by key; a sweep on the tiny Llama trains its
baseline and the sampler's trials through the real trainer, prunes a lagging trial (no
adapter), records every finished trial in the registry under its id, writes the report, and
resumes after its process is killed with the trial it was training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import chat_jsonl
from tuner.config import Recipe, recipe_from_dict, with_values
from tuner.registry import Registry
from tuner.sweep import Sweep, SweepBusy, TrialInfo, _driving

QA = [(f"what is item {i} ?", f"item {i} is number {i} of the list .") for i in range(16)]


def _toy(folder: Path) -> Path:
    return chat_jsonl(folder / "toy.jsonl", QA)


def _lagging(sweep: Sweep) -> None:
    """Trials 1 and 2 as planned: trial 1 learns like the baseline, trial 2 barely moves."""
    study = sweep._study()
    study.enqueue_trial({"hyperparameters.learning_rate": 2e-2, "hyperparameters.rank": 4})
    study.enqueue_trial({"hyperparameters.learning_rate": 1e-6, "hyperparameters.rank": 4})


def _recipe_dict(tiny: Path, data: Path, **sweep: Any) -> dict[str, Any]:
    return {
        "name": "toy-sweep",
        "method": "lora",
        "base_model": str(tiny),
        "datasets": [{"path": str(data)}],
        "hyperparameters": {
            "learning_rate": 3e-2,
            "batch_size": 4,
            "max_steps": 8,
            "val_fraction": 0.25,
            "eval_every": 2,
            "checkpoint_every": 2,
            "dropout": 0.0,
            "seed": 1,
        },
        "probe": False,
        "min_examples": 4,
        "sweep": {
            "trials": 3,
            "space": {
                "hyperparameters.learning_rate": {"type": "log_uniform", "low": 1e-6, "high": 5e-2},
                "hyperparameters.rank": {"type": "categorical", "choices": [4, 8]},
            },
            **sweep,
        },
    }


# ---- the sweep block ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"space": {}}, "sweep.space: a mapping of 1"),
        (
            {"space": {"hyperparameters.nope": {"type": "uniform", "low": 0, "high": 1}}},
            "not a key",
        ),
        ({"space": {"name": {"type": "categorical", "choices": ["a"]}}}, "keeps the recipe's"),
        ({"space": {"hyperparameters": {"type": "categorical", "choices": [1]}}}, "single value"),
        (
            {"space": {"hyperparameters.dropout": {"type": "uniform", "low": 0.2, "high": 0.1}}},
            "sweep.space.hyperparameters.dropout.high",
        ),
        (
            {"space": {"hyperparameters.dropout": {"type": "normal", "low": 0, "high": 0.1}}},
            "sweep.space.hyperparameters.dropout.type",
        ),
        (
            {
                "space": {
                    "hyperparameters.learning_rate": {"type": "log_uniform", "low": 0, "high": 1}
                }
            },
            "above 0 on a log scale",
        ),
        (
            {
                "space": {
                    "hyperparameters.learning_rate": {"type": "uniform", "low": 1e-4, "high": 2}
                }
            },
            "2 is not a value the recipe takes",
        ),
        (
            {"space": {"hyperparameters.rank": {"type": "int", "low": 16, "high": 32}}},
            "the recipe's own value within the range",
        ),
        ({"objective": "recall@10"}, "sweep.objective"),
        ({"pruner": "asha"}, "sweep.pruner"),
        ({"trials": 0}, "sweep.trials"),
        (
            {"space": {"hyperparameters.rank": {"type": "int", "low": 4, "high": 9, "oops": 1}}},
            "oops",
        ),
        ({"objective": "eval"}, "sweep.eval: set for objective eval"),
        ({"eval": {"dataset": "faq.jsonl"}}, "sweep.eval: set for objective eval"),
        ({"objective": "eval", "eval": {"dataset": ""}}, "sweep.eval.dataset"),
        ({"objective": "eval", "eval": {"dataset": "d", "metric": "bleu"}}, "sweep.eval.metric"),
        ({"objective": "eval", "eval": {"dataset": "d", "mode": "rag"}}, "sweep.eval.mode"),
        (
            {
                "space": {
                    "hyperparameters.val_fraction": {"type": "uniform", "low": 0.1, "high": 0.3}
                }
            },
            "not searched on val_loss: it changes the data",
        ),
        (  # a float range on an int field: its middle is refused, not trial after trial
            {"space": {"hyperparameters.rank": {"type": "uniform", "low": 4, "high": 16}}},
            "10.0 is not a value the recipe takes",
        ),
        (
            {"space": {"hyperparameters.rank": {"type": "categorical", "choices": [8, 8.0]}}},
            "each value once",
        ),
        (
            {"space": {"hyperparameters.dropout": {"type": "categorical", "choices": [0, False]}}},
            "each value once",
        ),
        (
            {
                "space": {
                    "hyperparameters.dropout": {"type": "uniform", "low": 0, "high": 1, "log": True}
                }
            },
            "for int only",
        ),
        (  # the recipe's rank 8 is off the grid 4, 9, 14
            {"space": {"hyperparameters.rank": {"type": "int", "low": 4, "high": 14, "step": 5}}},
            "on its step",
        ),
        ({"space": {"retriever.activate": {"type": "categorical", "choices": [True]}}}, "keeps"),
    ],
)
def test_a_bad_sweep_block_is_refused_naming_the_key(
    tiny_llama: Path, tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    data = _recipe_dict(tiny_llama, _toy(tmp_path))
    data["sweep"].update(change)
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        recipe_from_dict(data)


def test_data_keys_are_searched_only_on_an_eval_objective(tiny_llama: Path, tmp_path: Path) -> None:
    data = _recipe_dict(tiny_llama, _toy(tmp_path))
    data["datasets"] = [{"synthetic": {"kind": "raft", "p_gold": 0.8}}]
    data["sweep"]["space"] = {
        "datasets.0.synthetic.p_gold": {"type": "uniform", "low": 0.5, "high": 1.0}
    }
    with pytest.raises(ValueError, match="sweep.space.datasets.0.synthetic.p_gold: not searched"):
        recipe_from_dict(data)
    data["sweep"].update(objective="eval", eval={"dataset": "dev.jsonl", "limit": 20})
    recipe = recipe_from_dict(data)
    assert recipe.sweep is not None and recipe.sweep.direction == "maximize"
    trial = with_values(recipe, {"datasets.0.synthetic.p_gold": 0.6})
    assert trial.datasets[0].synthetic is not None and trial.datasets[0].synthetic.p_gold == 0.6
    assert trial.sweep is None and recipe.datasets[0].synthetic.p_gold == 0.8  # type: ignore[union-attr]


def test_an_int_range_given_as_floats_samples_ints(tiny_llama: Path, tmp_path: Path) -> None:
    data = _recipe_dict(tiny_llama, _toy(tmp_path))
    data["sweep"]["space"] = {"hyperparameters.rank": {"type": "int", "low": 4.0, "high": 16.0}}
    recipe = recipe_from_dict(data)  # JSON bodies give 4.0 for 4
    assert recipe.sweep is not None
    param = recipe.sweep.space["hyperparameters.rank"]
    assert (param.low, param.high) == (4, 16) and isinstance(param.low, int)


def test_objectives_measured_on_held_out_rows_need_some(tiny_llama: Path, tmp_path: Path) -> None:
    data = _recipe_dict(tiny_llama, _toy(tmp_path), objective="reward_accuracy")
    data.update(method="dpo", datasets=[{"path": str(tmp_path / "pairs.jsonl")}])
    data["preference"] = {"held_out": 0.0}
    data["sweep"]["space"] = {"preference.beta": {"type": "log_uniform", "low": 0.05, "high": 1}}
    with pytest.raises(ValueError, match="preference.held_out: above 0 for a sweep on reward"):
        recipe_from_dict(data)


def test_a_sweep_on_val_loss_needs_a_validation_split(tiny_llama: Path, tmp_path: Path) -> None:
    data = _recipe_dict(tiny_llama, _toy(tmp_path))
    data["hyperparameters"]["val_fraction"] = 0.0
    with pytest.raises(ValueError, match="hyperparameters.val_fraction"):
        recipe_from_dict(data)


def test_a_recipe_with_a_sweep_block_round_trips(tiny_llama: Path, tmp_path: Path) -> None:
    recipe = recipe_from_dict(_recipe_dict(tiny_llama, _toy(tmp_path)))
    again = recipe_from_dict(json.loads(json.dumps(recipe.to_dict())))
    assert again.sweep == recipe.sweep
    assert again.sweep is not None and again.sweep.space["hyperparameters.rank"].choices == [4, 8]


# ---- a sweep through the real trainer -------------------------------------------------------
def _in_process(tmp: Path) -> Any:
    """Trials trained as ``ragtune tune`` trains one: prepare, then the trainer, in a job folder."""
    from transformers import AutoTokenizer

    from tuner.hooks import SWEEP_FILE
    from tuner.prepare import prepare
    from tuner.train import train

    data_dir = tmp / "data"
    seen: list[tuple[dict[str, Any], str | None]] = []

    def run_trial(recipe: Recipe, info: TrialInfo, hooks: Any) -> Any:
        key = info.resume or f"t{info.sweep['trial']}"
        info.started(key)
        seen.append((dict(info.sweep), info.resume))
        job = data_dir / "jobs" / key
        tok = AutoTokenizer.from_pretrained(recipe.base_model)
        prepare(recipe, job, files_dir=tmp / "files", tokenizer=tok)
        (job / SWEEP_FILE).write_text(json.dumps(info.sweep))
        return train(recipe, job, data_dir=data_dir, hooks=hooks, device="cpu")

    return run_trial, seen, data_dir


def test_a_sweep_prunes_a_lagging_trial_and_records_the_rest(
    tiny_llama: Path, tmp_path: Path
) -> None:
    recipe = recipe_from_dict(_recipe_dict(tiny_llama, _toy(tmp_path)))
    sweep = Sweep.open(tmp_path / "data" / "sweeps", recipe)
    _lagging(sweep)  # after the baseline (lr 3e-2, rank 8)
    run_trial, seen, data_dir = _in_process(tmp_path)
    summary = sweep.run(run_trial)

    states = [t["state"] for t in summary["trials"]]
    assert states == ["complete", "complete", "pruned"], summary["trials"]
    assert summary["trials"][0]["baseline"] and summary["baseline"]["number"] == 0
    assert summary["trials"][0]["params"] == {
        "hyperparameters.learning_rate": 3e-2,
        "hyperparameters.rank": 8,
    }
    pruned = summary["trials"][2]
    assert pruned["adapter"] is None and pruned["last_update"] < 8
    records = [r for r in Registry(data_dir / "adapters").list() if r.tracked]
    assert len(records) == 2  # the pruned trial left no adapter
    by_trial = {r.sweep["trial"]: r for r in records if r.sweep}
    assert set(by_trial) == {0, 1}
    assert all(r.sweep["id"] == sweep.id for r in by_trial.values())
    assert by_trial[1].sweep["params"]["hyperparameters.learning_rate"] == 2e-2
    assert by_trial[1].hyperparameters["learning_rate"] == 2e-2
    assert by_trial[1].hyperparameters["rank"] == 4
    best = summary["best"]
    values = {t["number"]: t["value"] for t in summary["trials"][:2]}
    assert best["number"] == min(values, key=values.get)
    assert best["adapter"] == by_trial[best["number"]].id
    assert summary["state"] == "succeeded"
    assert not any(r.promoted for r in records)  # named, never promoted
    on_disk = json.loads((sweep.folder / "sweep.json").read_text())
    assert on_disk["best"]["number"] == best["number"]
    # the report: the best against the recipe's own values, every trial, Optuna's charts
    md = (sweep.folder / "report.md").read_text()
    assert "Best trial against the recipe's values" in md and "pruned at update" in md
    html = (sweep.folder / "report.html").read_text()
    assert "data:image/png;base64," in html and "<script" not in html
    for chart in ("history", "slice", "importances"):
        assert (sweep.folder / f"{chart}.png").stat().st_size > 1000, chart
    # done: opening and running it again trains nothing more
    again = Sweep.open(tmp_path / "data" / "sweeps", recipe).run(run_trial)
    assert len(seen) == 3 and len(again["trials"]) == 3


def test_an_eval_objective_scores_each_trained_trial(tiny_llama: Path, tmp_path: Path) -> None:
    data = _recipe_dict(tiny_llama, _toy(tmp_path), objective="eval", eval={"dataset": "dev"})
    recipe = recipe_from_dict(data)
    run_trial, _, data_dir = _in_process(tmp_path)
    scored: list[str] = []

    def score(record: Any) -> float:  # stands in for an eval run: the higher, the better
        scored.append(record.id)
        if record.sweep["trial"] == 1:
            raise RuntimeError("the eval run failed")
        return 1.0 - record.metrics["val_loss"] / 10

    sweep = Sweep.open(tmp_path / "sweeps", recipe)
    with pytest.raises(ValueError, match="eval needs"):
        sweep.run(run_trial)
    summary = sweep.run(run_trial, score=score)
    assert [t["state"] for t in summary["trials"]] == ["complete", "fail", "complete"]
    assert (
        "eval of toy-sweep-v2: RuntimeError: the eval run failed" in summary["trials"][1]["error"]
    )
    assert summary["direction"] == "maximize" and len(scored) == 3
    best = max((t for t in summary["trials"] if t["value"] is not None), key=lambda t: t["value"])
    assert summary["best"]["number"] == best["number"]


def test_a_repeated_proposal_keeps_the_value_it_had(tiny_llama: Path, tmp_path: Path) -> None:
    data = _recipe_dict(tiny_llama, _toy(tmp_path), trials=3, pruner="none")
    data["sweep"]["space"] = {"hyperparameters.rank": {"type": "categorical", "choices": [4, 8]}}
    recipe = recipe_from_dict(data)
    sweep = Sweep.open(tmp_path / "sweeps", recipe)
    study = sweep._study()
    study.enqueue_trial({"hyperparameters.rank": 8})  # trial 1 asks the baseline's again
    study.enqueue_trial({"hyperparameters.rank": 4})
    run_trial, seen, _ = _in_process(tmp_path)
    summary = sweep.run(run_trial)
    rows = summary["trials"]
    assert rows[1]["repeats"] == 0 and rows[1]["value"] == rows[0]["value"]
    assert rows[1]["adapter"] == rows[0]["adapter"]
    assert [s["trial"] for s, _ in seen] == [0, 2]  # only new values train


def test_an_interrupted_sweep_stays_running_and_resumes_its_trial(
    tiny_llama: Path, tmp_path: Path
) -> None:
    recipe = recipe_from_dict(_recipe_dict(tiny_llama, _toy(tmp_path), trials=2, pruner="none"))
    run_trial, seen, _ = _in_process(tmp_path)

    def interrupted(r: Recipe, info: TrialInfo, hooks: Any) -> Any:
        if info.sweep["trial"] == 1 and info.resume is None:
            info.started("t1-first")
            raise KeyboardInterrupt  # Ctrl-C while trial 1 trains
        return run_trial(r, info, hooks)

    sweep = Sweep.open(tmp_path / "sweeps", recipe)
    with pytest.raises(KeyboardInterrupt):
        sweep.run(interrupted)
    assert sweep.state() == "running" and sweep.summary()["trials"][1]["state"] == "running"
    summary = Sweep.open(tmp_path / "sweeps", recipe).run(interrupted)
    assert [t["state"] for t in summary["trials"]] == ["complete", "complete"]
    assert seen[-1] == (seen[-1][0], "t1-first")  # the same trial, resumed by its key
    assert seen[-1][0]["trial"] == 1


def test_cancelling_fails_the_trials_a_killed_run_left(tiny_llama: Path, tmp_path: Path) -> None:
    from tuner.hooks import Cancelled

    recipe = recipe_from_dict(_recipe_dict(tiny_llama, _toy(tmp_path), trials=3))
    sweep = Sweep.open(tmp_path / "sweeps", recipe)
    study = sweep._study()
    study.ask()  # trial 0, left running by a run that was killed
    with pytest.raises(Cancelled):
        sweep.run(lambda *a: None, should_stop=lambda: True)
    summary = sweep.summary()
    assert summary["state"] == "cancelled" and summary["trials"][0]["state"] == "fail"


def test_a_trial_error_reaches_clients_without_server_paths(
    tiny_llama: Path, tmp_path: Path
) -> None:
    recipe = recipe_from_dict(_recipe_dict(tiny_llama, _toy(tmp_path), trials=1))
    where = tmp_path / "data" / "sweeps"

    def broken(r: Recipe, info: TrialInfo, hooks: Any) -> Any:
        raise FileNotFoundError(f"no such file: {where / 'x' / 'metrics.json'}")

    summary = Sweep.open(where, recipe).run(broken)
    error = summary["trials"][0]["error"]
    assert "no such file" in error and str(tmp_path) not in error


def test_one_process_runs_a_sweep_at_a_time(tiny_llama: Path, tmp_path: Path) -> None:
    recipe = recipe_from_dict(_recipe_dict(tiny_llama, _toy(tmp_path)))
    sweep = Sweep.open(tmp_path / "sweeps", recipe)
    with _driving(sweep.folder), pytest.raises(SweepBusy, match="another process"):
        sweep.run(lambda *a: None)


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(
    tiny_llama: Path, tmp_path: Path
) -> None:
    recipe = recipe_from_dict(_recipe_dict(tiny_llama, _toy(tmp_path), pruner="none"))
    run_trial, _, _ = _in_process(tmp_path)
    calls = []

    def flaky(r: Recipe, info: TrialInfo, hooks: Any) -> Any:
        calls.append(info.sweep["trial"])
        if info.sweep["trial"] == 1:
            raise RuntimeError("out of memory\nmore lines")
        return run_trial(r, info, hooks)

    summary = Sweep.open(tmp_path / "sweeps", recipe).run(flaky)
    assert [t["state"] for t in summary["trials"]] == ["complete", "fail", "complete"]
    assert summary["trials"][1]["error"] == "RuntimeError: out of memory"


def test_trials_failing_in_a_row_stop_the_sweep(tiny_llama: Path, tmp_path: Path) -> None:
    recipe = recipe_from_dict(_recipe_dict(tiny_llama, _toy(tmp_path), trials=5))

    def broken(r: Recipe, info: TrialInfo, hooks: Any) -> Any:
        raise OSError("disk full")

    sweep = Sweep.open(tmp_path / "sweeps", recipe)
    with pytest.raises(
        RuntimeError, match="3 trials failed in a row; the last: OSError: disk full"
    ):
        sweep.run(broken)
    assert sweep.state() == "failed"


def test_a_cancelled_sweep_stops_its_trial_and_says_so(tiny_llama: Path, tmp_path: Path) -> None:
    from tuner.hooks import Cancelled

    recipe = recipe_from_dict(_recipe_dict(tiny_llama, _toy(tmp_path)))
    run_trial, _, data_dir = _in_process(tmp_path)
    stop = {"now": False}

    def stopping(r: Recipe, info: TrialInfo, hooks: Any) -> Any:
        stop["now"] = info.sweep["trial"] == 1  # asked to stop while trial 1 trains
        return run_trial(r, info, hooks)

    sweep = Sweep.open(tmp_path / "sweeps", recipe)
    with pytest.raises(Cancelled):
        sweep.run(stopping, should_stop=lambda: stop["now"])
    summary = json.loads((sweep.folder / "sweep.json").read_text())
    assert summary["state"] == "cancelled"
    assert [t["state"] for t in summary["trials"]] == ["complete", "fail"]
    assert summary["trials"][1]["error"] == "cancelled"
    assert len(Registry(data_dir / "adapters").list()) == 1


def test_a_sweep_stops_starting_trials_when_its_time_is_spent(
    tiny_llama: Path, tmp_path: Path
) -> None:
    recipe = recipe_from_dict(_recipe_dict(tiny_llama, _toy(tmp_path), trials=10, timeout_s=0.5))
    run_trial, _, _ = _in_process(tmp_path)

    def slow(r: Recipe, info: TrialInfo, hooks: Any) -> Any:
        time.sleep(0.6)  # the first trial outlasts the budget, however fast the machine
        return run_trial(r, info, hooks)

    summary = Sweep.open(tmp_path / "sweeps", recipe).run(slow)
    assert len(summary["trials"]) == 1  # the first trial outlasts the budget; no other starts
    assert summary["state"] == "succeeded" and summary["spent_s"] >= 0.5


# ---- the command line, killed and resumed ---------------------------------------------------
@pytest.mark.slow
def test_tune_sweep_resumes_after_a_kill(tiny_llama: Path, tmp_path: Path) -> None:
    data = _recipe_dict(tiny_llama, _toy(tmp_path), trials=2, pruner="none")
    data["hyperparameters"].update(max_steps=40, checkpoint_every=2, eval_every=4)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    env = {**os.environ, "RAGTUNE_DATA_DIR": str(tmp_path / "data"), "RAGTUNE_THREADS": "1"}
    ragtune = str(Path(sys.executable).parent / "ragtune")
    cmd = [ragtune, "tune", "--recipe", str(path), "--sweep"]
    jobs = tmp_path / "data" / "jobs"
    out = tmp_path / "first.log"
    with out.open("wb") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while not any(jobs.glob("cli-sweep-*-t1/checkpoints/*")):  # trial 1 has a checkpoint
        assert proc.poll() is None, out.read_text()
        assert time.monotonic() < deadline, "trial 1 never checkpointed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    folder = next((tmp_path / "data" / "sweeps").iterdir())
    assert json.loads((folder / "sweep.json").read_text())["state"] == "running"

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((folder / "sweep.json").read_text())
    assert [t["state"] for t in summary["trials"]] == ["complete", "complete"]
    assert summary["trials"][1]["key"].endswith("-t1")  # the same folder, resumed
    assert "trial 1: resuming from" in done.stdout
    assert "Using an existing study" not in done.stderr  # Optuna's own chatter is kept down
    assert "best: trial" in done.stdout and "report:" in done.stdout
    records = Registry(tmp_path / "data" / "adapters").list()
    assert sorted(r.sweep["trial"] for r in records if r.sweep) == [0, 1]
    assert all(r.metrics["updates"] == 40 for r in records)


@pytest.mark.slow
def test_tune_sweep_scored_by_a_short_eval(tiny_llama: Path, tiny_st: Path, tmp_path: Path) -> None:
    """objective eval from the command line: each trial's adapter answers the dev questions
    (``ragtune eval`` in a child process), the sweep keeps the mean token F1 of each."""
    dev = tmp_path / "dev.jsonl"
    rows = [
        {
            "id": f"d{i}",
            "context": f"item {i} is number {i} of the list .",
            "question": q,
            "answers": [a],
        }
        for i, (q, a) in enumerate(QA[:4])
    ]
    dev.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = _recipe_dict(
        tiny_llama,
        _toy(tmp_path),
        trials=2,
        objective="eval",
        eval={"dataset": str(dev), "metric": "token_f1", "limit": 3, "max_new_tokens": 8},
    )
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    env = {
        **os.environ,
        "RAGTUNE_DATA_DIR": str(tmp_path / "data"),
        "RAGTUNE_GENERATOR": str(tiny_llama),
        "RAGTUNE_EMBEDDER": str(tiny_st),
        "RAGTUNE_THREADS": "1",
    }
    ragtune = str(Path(sys.executable).parent / "ragtune")
    done = subprocess.run(
        [ragtune, "tune", "--recipe", str(path), "--sweep"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    folder = next((tmp_path / "data" / "sweeps").iterdir())
    summary = json.loads((folder / "sweep.json").read_text())
    assert [t["state"] for t in summary["trials"]] == ["complete", "complete"], summary["trials"]
    for t in summary["trials"]:
        run = json.loads((folder / "evals" / f"trial-{t['number']}" / "metrics.json").read_text())
        assert run["run"]["adapters"]["hybrid"] == t["adapter"]
        assert run["run"]["questions"] == 3
        assert t["value"] == pytest.approx(run["metrics"]["hybrid"]["token_f1"]["mean"])
    assert "scoring toy-sweep-v1" in done.stdout


def test_a_retriever_sweep_never_switches_the_index(tmp_path: Path) -> None:
    from types import SimpleNamespace

    recipe = recipe_from_dict(
        {
            "name": "emb-sweep",
            "component": "retriever",
            "method": "full",
            "base_model": "tiny-st",
            "datasets": [{"synthetic": {"kind": "pairs"}}],
            "hyperparameters": {"learning_rate": 2e-5, "val_fraction": 0.2},
            "sweep": {
                "trials": 2,
                "objective": "recall@10",
                "space": {"retriever.negatives": {"type": "int", "low": 1, "high": 5}},
            },
        }
    )
    seen: list[Recipe] = []

    def run_trial(r: Recipe, info: TrialInfo, hooks: Any) -> Any:
        seen.append(r)
        n = info.sweep["trial"]
        return SimpleNamespace(id=f"emb-sweep-v{n + 1}", metrics={"recall@10_after": 0.5 + n / 10})

    summary = Sweep.open(tmp_path / "sweeps", recipe).run(run_trial)
    assert [r.retriever.activate for r in seen] == [False, False]
    assert summary["direction"] == "maximize" and summary["best"]["number"] == 1


def test_hyperband_prunes_through_the_real_trainer_too(tiny_llama: Path, tmp_path: Path) -> None:
    recipe = recipe_from_dict(_recipe_dict(tiny_llama, _toy(tmp_path), pruner="hyperband"))
    sweep = Sweep.open(tmp_path / "data" / "sweeps", recipe)
    _lagging(sweep)
    run_trial, _, _ = _in_process(tmp_path)
    summary = sweep.run(run_trial)
    states = [t["state"] for t in summary["trials"]]
    assert len(states) == 3 and states[0] == "complete" and "fail" not in states
    assert summary["best"] is not None

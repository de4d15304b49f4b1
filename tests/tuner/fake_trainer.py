"""A fast stand-in for ``tuner.train.train`` and ``tuner.prepare.prepare``, for job tests.

Run as the worker with ``python -m tests.tuner.fake_trainer JOB_DIR`` (the real worker code with
this trainer). Each step sleeps ``FAKE_STEP_S`` seconds (default 0.05), appends its number to
``job_dir/steps.txt`` and checkpoints the step counter to ``job_dir/checkpoints/step.json``
every ``checkpoint_every`` steps; ``resume`` continues after the last checkpoint. Recipe names
steer it: ``fail...`` raises at step 2, ``stubborn...`` ignores cancellation, and ``baddata...``
makes ``prepare`` refuse the data with line-numbered problems.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tuner.config import Recipe


class BadData(ValueError):
    def __init__(self, problems: list[tuple[int, str]]) -> None:
        super().__init__("; ".join(f"line {n}: {m}" for n, m in problems))
        self.problems = problems


def prepare(recipe: Recipe, job_dir: Path) -> dict[str, int]:
    if recipe.name.startswith("baddata"):
        raise BadData([(3, "empty answer"), (7, "not JSON")])
    (job_dir / "data").mkdir(parents=True, exist_ok=True)
    (job_dir / "data" / "train.jsonl").write_text('{"messages": []}\n')
    return {"train": 1}


def train(
    recipe: Recipe, job_dir: Path, *, data_dir: Path, hooks: Any = None, resume: bool = True
) -> SimpleNamespace:
    from tuner.hooks import Cancelled

    assert (job_dir / "data" / "train.jsonl").is_file(), "prepare did not run"
    hp = recipe.hyperparameters
    total = hp.max_steps or 6
    ckpt = job_dir / "checkpoints" / "step.json"
    step = json.loads(ckpt.read_text())["step"] if resume and ckpt.is_file() else 0
    pause = float(os.environ.get("FAKE_STEP_S", "0.05"))
    with open(job_dir / "starts.txt", "a") as f:  # where each run began (0, or a checkpoint)
        f.write(f"{step}\n")
    while step < total:
        time.sleep(pause)
        step += 1
        with open(job_dir / "steps.txt", "a") as f:
            f.write(f"{step}\n")
        if recipe.name.startswith("fail") and step == 2:
            raise RuntimeError("the fake trainer failed at step 2")
        val = 1.0 / step if step % hp.eval_every == 0 else None
        if hooks is not None:
            hooks.progress(step, total, 2.0 / step, val)
            if hooks.should_stop() and not recipe.name.startswith("stubborn"):
                raise Cancelled(f"stopped at {step}")
        if step % hp.checkpoint_every == 0:
            ckpt.parent.mkdir(exist_ok=True)
            tmp = ckpt.with_suffix(".tmp")
            tmp.write_text(json.dumps({"step": step}))
            os.replace(tmp, ckpt)
    return SimpleNamespace(id=f"{recipe.name}-v1")


def make_runner(data_dir: Path, step_s: float = 0.05, **kwargs: Any) -> Any:
    """A ``JobRunner`` whose worker is this module (``python -m tests.tuner.fake_trainer``)."""
    from tuner.jobs import JobRunner

    root = Path(__file__).resolve().parents[2]
    return JobRunner(
        data_dir,
        kwargs.pop("prepare", prepare),
        command=[sys.executable, "-m", "tests.tuner.fake_trainer"],
        env={"PYTHONPATH": str(root), "FAKE_STEP_S": str(step_s)},
        poll_s=0.05,
        **kwargs,
    )


if __name__ == "__main__":
    from tuner.worker import main

    sys.exit(main(train=train))

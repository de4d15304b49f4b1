"""The job runner with the real worker and trainer: a tiny-model LoRA job goes from validating
to succeeded in a separate process, lands in the registry with its loss curve; a cancelled
real job stops; bad data fails the job with line numbers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.tuner.test_train import _toy_file
from tuner.jobs import JobRunner


def _runner(data_dir: Path, tiny: Path) -> JobRunner:
    from transformers import AutoTokenizer

    from tuner.prepare import prepare

    tok = AutoTokenizer.from_pretrained(tiny)

    def prep(recipe: Any, job_dir: Path) -> Any:
        return prepare(recipe, job_dir, files_dir=data_dir / "files", tokenizer=tok)

    root = Path(__file__).resolve().parents[2]
    return JobRunner(
        data_dir, prep, env={"PYTHONPATH": str(root)}, options={"device": "cpu"}, poll_s=0.1
    )


def _recipe(tiny: Path, data: Path, name: str, steps: int) -> dict[str, Any]:
    return {
        "name": name,
        "method": "lora",
        "base_model": str(tiny),
        "datasets": [{"path": str(data)}],
        "hyperparameters": {
            "learning_rate": 3e-2,
            "batch_size": 4,
            "max_steps": steps,
            "val_fraction": 0.25,
            "eval_every": 2,
        },
        "probe": False,
        "min_examples": 4,
    }


def _wait(runner: JobRunner, job_id: str, states: set[str], timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = runner.get(job_id)
        if job.state in states:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} stuck in {runner.get(job_id).state}")


def test_a_real_job_trains_in_its_own_process_and_registers(tiny_llama: Path, tmp_path: Path):
    from tuner.registry import Registry

    data_dir = tmp_path / "data"
    with _runner(data_dir, tiny_llama) as runner:
        job_id = runner.submit(_recipe(tiny_llama, _toy_file(tmp_path), "real", 6))
        job = _wait(runner, job_id, {"succeeded", "failed", "cancelled"})
    assert job.state == "succeeded", job.error
    assert job.adapter == "real-v1" and [s for s, _ in job.loss_curve] == list(range(1, 7))
    assert job.val_losses  # validation every 2 updates
    record = Registry(data_dir / "adapters").get("real-v1")
    assert record.metrics["updates"] == 6 and record.dataset_hashes


def test_bad_data_fails_the_job_with_line_numbers(tiny_llama: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"instruction": "what is debian ?", "output": "a system"}\n{"instruction": 1}\n'
    )
    with _runner(tmp_path / "data", tiny_llama) as runner:
        job_id = runner.submit(_recipe(tiny_llama, bad, "bad", 2))
        job = _wait(runner, job_id, {"failed", "succeeded"})
    assert job.state == "failed"
    assert any(line == 2 for line, _ in job.problems), job.problems

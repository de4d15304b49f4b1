"""The training process of one job: ``python -m tuner.worker <job_dir>``.

Reads ``job_dir/recipe.json`` and ``job_dir/job.json`` (written by ``tuner.jobs.JobRunner``),
calls the trainer with hooks that record progress and the loss curve in the job store
(``job_dir/../jobs.db``) and poll the cancel flag every step, beats a heartbeat every few
seconds, and records the outcome: succeeded (with the adapter id), cancelled, or failed (with
the error; the traceback goes to stderr, which the runner sends to ``job_dir/log.txt``). Exits
0 unless training failed. Training resumes from the job's last checkpoint, if it has one.

Never opens the live document index (the service holds its lock): everything it needs was
prepared into ``job_dir/data`` before it started. Knows nothing of HTTP or of how training works.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuner.config import recipe_from_dict
from tuner.hooks import Cancelled
from tuner.jobstore import record_failure, start_heartbeat
from tuner.layout import DataLayout
from tuner.pgjobs import worker_store

log = logging.getLogger("tuner.worker")
Train = Callable[..., Any]


class Hooks:
    """What the trainer calls each optimizer update: record progress, ask whether to stop."""

    def __init__(self, store: Any, job_id: str) -> None:
        self.store, self.job_id = store, job_id

    def progress(self, step: int, total: int, loss: float, val_loss: float | None) -> None:
        self.store.progress(self.job_id, step, total, float(loss), val_loss)

    def should_stop(self) -> bool:
        return self.store.cancel_requested(self.job_id)


def run(job_dir: Path, train: Train) -> int:
    """Train the job in ``job_dir`` with ``train``; return the process exit code."""
    job_dir = job_dir.resolve()
    store = worker_store(job_dir)
    options = json.loads((job_dir / "job.json").read_text(encoding="utf-8"))
    job_id = options.pop("id")
    recipe = recipe_from_dict(json.loads((job_dir / "recipe.json").read_text(encoding="utf-8")))
    stop = start_heartbeat(store, job_id)
    if options.get("threads"):
        import torch

        torch.set_num_threads(int(options["threads"]))
    kwargs = {k: options[k] for k in ("device", "base_path", "embedder_path") if options.get(k)}
    if options.get("models_dir"):
        kwargs["models_dir"] = Path(options["models_dir"])
    if options.get("offline") is not None:
        kwargs["offline"] = bool(options["offline"])
    try:
        record = train(
            recipe,
            job_dir,
            data_dir=DataLayout.of_job(job_dir).root,
            hooks=Hooks(store, job_id),
            resume=True,
            **kwargs,
        )
    except Cancelled:
        log.info("job %s cancelled", job_id)
        store.finish(job_id, "cancelled")
        return 0
    except Exception as exc:  # noqa: BLE001 - every failure is recorded on the job
        record_failure(store, job_id, job_dir, exc)
        return 1
    finally:
        stop.set()
    adapter = getattr(record, "id", None)
    store.finish(job_id, "succeeded", adapter=adapter)
    log.info("job %s succeeded: adapter %s", job_id, adapter)
    return 0


def main(argv: list[str] | None = None, train: Train | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m tuner.worker JOB_DIR\n")
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if train is None:
        from tuner.train import train as real_train

        train = real_train
    return run(Path(args[0]), train)


if __name__ == "__main__":
    sys.exit(main())

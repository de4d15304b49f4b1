"""What a trainer shares with whoever runs it, and what the two trainers share with each other.

``Cancelled`` is the one exception that says "the run was asked to stop": the generator and
embedder trainers raise it, and so does an eval run; ``tuner.worker`` and ``eval.worker`` catch
it and record the job as cancelled.
``Hooks`` is the protocol a runner hands a trainer: ``progress`` after every optimizer update,
``should_stop`` to ask whether to stop. ``register_adapter`` saves a trained model into the
adapter registry with its job's lineage (the dataset hashes and source documents that
``tuner.prepare`` wrote into ``job_dir/data/manifest.json``).

Knows nothing of how training works, of job stores, HTTP or the live index.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from tuner.config import Recipe


class Cancelled(Exception):
    """The run was asked to stop; nothing was saved to the registry."""


class Hooks(Protocol):
    def progress(self, step: int, total: int, loss: float, val_loss: float | None) -> None: ...

    def should_stop(self) -> bool: ...


def job_manifest(job_dir: Path) -> dict[str, Any]:
    """``job_dir/data/manifest.json`` (what the data was made from), or {} when there is none."""
    path = job_dir / "data" / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


SWEEP_FILE = "sweep.json"  # in a job folder: the sweep trial it trains (tuner.sweep)


def job_sweep(job_dir: Path) -> dict[str, Any] | None:
    """The sweep trial a job trains (``job_dir/sweep.json``), or None for a single job."""
    path = job_dir / SWEEP_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def register_adapter(
    registry: Any,
    recipe: Recipe,
    job_dir: Path,
    save: Callable[[Path], None],
    *,
    base_model: str,
    metrics: dict[str, Any],
    parent: Any,
    **extra: Any,
) -> Any:
    """Save what ``save(folder)`` writes into ``registry`` as ``recipe``'s adapter, with the job
    manifest's lineage, ``parent``'s id and the sweep trial the job is (if it is one); ``extra``
    (e.g. ``component``) goes to ``Registry.save``. Returns the registry record."""
    manifest = job_manifest(job_dir)
    return registry.save(
        save,
        name=recipe.name,
        method=recipe.method,
        **extra,
        base_model=base_model,
        dataset_hashes=manifest.get("dataset_hashes", {}),
        source_documents=manifest.get("source_documents", {}),
        feedback_ids=manifest.get("feedback_ids", []),
        hyperparameters=recipe.to_dict()["hyperparameters"],
        metrics=metrics,
        parent=parent.id if parent is not None else None,
        sweep=job_sweep(job_dir),
    )

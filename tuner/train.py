"""Train a prepared tuning job: the entry point that picks the recipe for the recipe's component.

``train(recipe, job_dir, data_dir=...)`` reads ``job_dir/data/`` (written by ``tuner.prepare``)
and returns the registry record of what it trained: a generator recipe runs
``tuner.generator_train`` (accelerate; checkpoints and resume), kto and dpo run
``tuner.preference_train`` (TRL's trainers), a retriever recipe runs
``tuner.embed_train.train_retriever`` (sentence-transformers). ``python -m tuner.train`` is the
same from the command line, also under ``accelerate launch --num_processes N``. Knows nothing of
HTTP, jobs or the live index, nor how either recipe trains.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from tuner.config import Recipe
from tuner.hooks import Hooks

log = logging.getLogger(__name__)


def train(
    recipe: Recipe,
    job_dir: Path,
    *,
    data_dir: Path,
    hooks: Hooks | None = None,
    resume: bool = True,
    device: str = "auto",
    models_dir: Path | None = None,
    base_path: str | None = None,
    embedder_path: str | None = None,
    offline: bool | None = None,
) -> Any:
    """Train ``recipe`` on the data prepared in ``job_dir``; return the registry record.
    ``models_dir`` holds converted base weights (default ``data_dir/models``); ``base_path`` is
    an explicit local copy of the base model (a folder or .gguf file) to use instead of its
    preset's sources. A retriever recipe goes to ``tuner.embed_train.train_retriever`` (with
    ``embedder_path`` as its base's local copy; ``offline`` as in ``retriever.sources``)."""
    if recipe.component == "retriever":
        from tuner.embed_train import train_retriever

        return train_retriever(
            recipe,
            job_dir,
            data_dir=data_dir,
            hooks=hooks,
            device=device,
            embedder_path=embedder_path,
            offline=offline,
        )
    from tuner.config import PREFERENCE_METHODS

    if recipe.method in PREFERENCE_METHODS:
        from tuner.preference_train import train_preference as run
    else:
        from tuner.generator_train import train_generator as run
    return run(
        recipe,
        job_dir,
        data_dir=data_dir,
        hooks=hooks,
        resume=resume,
        device=device,
        models_dir=models_dir,
        base_path=base_path,
    )


# ---- command line -----------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    """``python -m tuner.train --job-dir DIR --data-dir DIR``: train the job folder's
    ``recipe.json`` on the data ``tuner.prepare`` wrote under ``DIR/data/``. Under
    ``accelerate launch --multi_gpu --num_processes N -m tuner.train ...`` every process runs
    this and together they train one adapter (gloo on CPU, NCCL on GPUs)."""
    import argparse

    from tuner.config import recipe_from_dict

    parser = argparse.ArgumentParser(
        prog="python -m tuner.train", description="Train a prepared tuning job."
    )
    parser.add_argument(
        "--job-dir", type=Path, required=True, help="holds recipe.json and data/ from prepare"
    )
    parser.add_argument(
        "--data-dir", type=Path, required=True, help="the data dir whose adapters/ is the registry"
    )
    parser.add_argument(
        "--models-dir", type=Path, default=None, help="converted base weights (DATA_DIR/models)"
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    args = parser.parse_args(argv)
    rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s [{rank}/{world}] %(levelname)s %(name)s: %(message)s",
    )
    path = args.job_dir / "recipe.json"
    try:
        recipe = recipe_from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        parser.error(f"{path}: {exc}")
    record = train(
        recipe,
        args.job_dir,
        data_dir=args.data_dir,
        resume=not args.no_resume,
        device=args.device,
        models_dir=args.models_dir,
    )
    from accelerate import PartialState

    state = PartialState()
    log.info(
        "process %d of %d (%s) done%s",
        state.process_index,
        state.num_processes,
        state.distributed_type.value,
        f": registered {record.id}" if record is not None else "",
    )


if __name__ == "__main__":
    main()

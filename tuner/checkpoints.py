"""Training checkpoints of the generator recipe: write one atomically, find the latest, load it.

A checkpoint is a folder ``<root>/step-<N>/`` holding the weights being trained
(``trainable.safetensors``), the optimizer moments (``optimizer.pt``, written and read by this
process only, with ``weights_only=True``) and ``trainer.json`` (the schedule's state and the
``TrainState`` counters). It is built in a temp folder, fsynced and renamed; then
``<root>/latest.json`` is switched atomically and older checkpoints are removed, so a crash
leaves the previous checkpoint or the new one. Under several processes only the main one writes.

Knows nothing of data, the training loop or the registry.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner import methods
from tuner.durable import atomic_write_text, fsync


@dataclass
class TrainState:
    """What a checkpoint holds besides weights and optimizer moments."""

    step: int = 0  # optimizer updates done
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of ``epoch`` already consumed
    best_val: float | None = None
    bad_evals: int = 0
    losses: list[list[float]] = field(default_factory=list)  # [step, loss]
    val_losses: list[list[float]] = field(default_factory=list)  # [step, val loss]
    tokens: int = 0  # response tokens trained on
    seconds: float = 0.0


def latest_checkpoint(root: Path) -> Path | None:
    """The folder ``latest.json`` points at, if it is a whole checkpoint."""
    pointer = root / "latest.json"
    if not pointer.is_file():
        return None
    folder = root / json.loads(pointer.read_text())["folder"]
    return folder if (folder / "trainer.json").is_file() else None


def save_checkpoint(
    root: Path, state: TrainState, accelerator: Any, model: Any, optimizer: Any, scheduler: Any
) -> None:
    """Weights being trained (safetensors), optimizer moments, schedule and counters, written to
    a temp folder, fsynced and renamed; then ``latest.json`` is switched atomically."""
    import torch
    from safetensors.torch import save_file

    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{state.step}"
    tmp = root / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = methods.trainable_state(accelerator.unwrap_model(model))
    save_file(
        {k: v.contiguous().cpu() for k, v in weights.items()}, str(tmp / "trainable.safetensors")
    )
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    body = {**state.__dict__, "scheduler": scheduler.state_dict()}
    (tmp / "trainer.json").write_text(json.dumps(body))
    for f in tmp.iterdir():
        fsync(f)
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    atomic_write_text(root / "latest.json", json.dumps({"folder": name}))
    for old in root.glob("step-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(folder: Path, model: Any, optimizer: Any, scheduler: Any) -> TrainState:
    """Restore the trained weights, optimizer and schedule from ``folder``; return its counters."""
    import torch
    from safetensors.torch import load_file

    methods.load_trainable_state(model, load_file(str(folder / "trainable.safetensors")))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    body = json.loads((folder / "trainer.json").read_text())
    scheduler.load_state_dict(body.pop("scheduler"))
    return TrainState(**body)

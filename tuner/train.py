"""Fine-tune the generator on prepared data: setup -> train -> save -> cleanup, through accelerate.

``train(recipe, job_dir, data_dir=...)`` reads ``job_dir/data/{train,val}.jsonl`` (written by
``tuner.prepare``), wraps the base model with the recipe's method, and runs AdamW with gradient
accumulation, warmup and a schedule, loss on response tokens only. It evaluates validation loss
every ``eval_every`` updates (early stopping restores the best weights), checkpoints atomically
every ``checkpoint_every`` updates into ``job_dir/checkpoints`` and resumes from the latest one,
scores the forgetting probe before and after, and saves the adapter into the registry. The
same code runs in one process or under ``accelerate launch --num_processes N`` (gloo on CPU,
NCCL on GPUs); only the main process writes. Knows nothing of HTTP, jobs or the live index.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from tuner import methods
from tuner.config import Recipe
from tuner.durable import atomic_write_text, fsync
from tuner.hooks import Cancelled, Hooks, register_adapter
from tuner.layout import DataLayout
from tuner.models import DEFAULT_GENERATOR

log = logging.getLogger(__name__)


@dataclass
class _State:
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
) -> Any:
    """Train ``recipe`` on the data prepared in ``job_dir``; return the registry record.
    ``models_dir`` holds converted base weights (default ``data_dir/models``); ``base_path`` is
    an explicit local copy of the base model (a folder or .gguf file) to use instead of its
    preset's sources. A retriever recipe goes to ``tuner.embed_train.train_retriever`` (with
    ``embedder_path`` as its base's local copy)."""
    if recipe.component == "retriever":
        from tuner.embed_train import train_retriever

        return train_retriever(
            recipe,
            job_dir,
            data_dir=data_dir,
            hooks=hooks,
            device=device,
            embedder_path=embedder_path,
        )
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from tuner import data as tdata

    hp = recipe.hyperparameters
    methods.check_available(recipe.method)
    import torch

    # Under ``accelerate launch`` without a GPU, accelerate only forms a (gloo) process group
    # when told cpu=True; otherwise every process would train (and register) alone.
    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    accelerator = Accelerator(gradient_accumulation_steps=hp.grad_accum, cpu=cpu)
    set_seed(hp.seed)
    gen = methods.load_base(
        recipe.base_model or DEFAULT_GENERATOR,
        cache_dir=models_dir or DataLayout(data_dir).models,
        device=accelerator.device.type,
        method=recipe.method,
        local_path=base_path,
    )
    tok = gen.tokenizer
    train_set = _encoded(job_dir / "data" / "train.jsonl", tok, hp.max_length)
    val_set = _encoded(job_dir / "data" / "val.jsonl", tok, hp.max_length)
    if not train_set:
        raise ValueError(f"{job_dir}/data/train.jsonl holds no examples")
    registry = _registry(data_dir)
    parent = registry.get(recipe.parent) if recipe.parent else None
    if parent is not None and parent.method != recipe.method:
        raise ValueError(
            f"parent {parent.id} was trained with {parent.method}, not {recipe.method}"
        )

    probe_before = _probe(gen.model, tok) if recipe.probe and accelerator.is_main_process else None
    model = methods.wrap(
        gen.model, recipe.method, hp, registry.folder(parent.id) if parent else None
    )
    model.train()
    trainable, total_params = methods.count_trainable(model)
    log.info("%s: %d of %d weights trainable", recipe.method, trainable, total_params)

    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=float(hp.learning_rate or 0.0),  # Recipe.__post_init__ fills in the default
        weight_decay=hp.weight_decay,
    )
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    collate = partial(tdata.collate, pad_id=pad)
    per_epoch = math.ceil(
        math.ceil(len(train_set) / (hp.batch_size * accelerator.num_processes)) / hp.grad_accum
    )
    total = hp.max_steps or max(1, math.ceil(per_epoch * hp.epochs))
    scheduler = _scheduler(optimizer, hp.scheduler, int(hp.warmup_ratio * total), total)
    model, optimizer = accelerator.prepare(model, optimizer)

    state = _State()
    ckpt_root = job_dir / "checkpoints"
    latest = _latest_checkpoint(ckpt_root) if resume else None
    if latest is not None:
        state = _load_checkpoint(latest, accelerator.unwrap_model(model), optimizer, scheduler)
        log.info("resuming %s from update %d", recipe.name, state.step)
    best_weights: dict[str, Any] | None = None
    stopped_early = False
    started = time.perf_counter() - state.seconds

    def batches() -> Iterator[dict[str, Any]]:
        while True:
            loader: Any = torch.utils.data.DataLoader(
                train_set,  # type: ignore[arg-type]
                batch_size=hp.batch_size,
                shuffle=True,
                generator=torch.Generator().manual_seed(hp.seed + state.epoch),
                collate_fn=collate,
            )
            loader = accelerator.prepare_data_loader(loader)
            if state.batch_in_epoch:
                loader = accelerator.skip_first_batches(loader, state.batch_in_epoch)
            for batch in loader:
                state.batch_in_epoch += 1
                yield batch
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0

    window: list[float] = []
    tokens = 0  # response tokens in this process since the last update
    for batch in batches():
        if state.step >= total:
            break
        with accelerator.accumulate(model):
            loss = model(**batch).loss
            accelerator.backward(loss)
            if accelerator.sync_gradients and hp.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), hp.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
        window.append(float(loss.detach()))
        tokens += int((batch["labels"] != -100).sum())
        if not accelerator.sync_gradients:
            continue
        scheduler.step()
        state.step += 1
        # One collective per update, on the device the backend wants (NCCL refuses CPU
        # tensors): the mean loss over processes and the response tokens of all of them.
        local = torch.tensor([sum(window) / len(window), float(tokens)], device=accelerator.device)
        summed = accelerator.reduce(local, "sum").tolist()
        mean = summed[0] / accelerator.num_processes
        state.tokens += int(summed[1])
        window, tokens = [], 0
        state.losses.append([state.step, mean])
        val = None
        if val_set and (state.step % hp.eval_every == 0 or state.step == total):
            val = _val_loss(model, val_set, collate, int(hp.batch_size or 1), accelerator)
            state.val_losses.append([state.step, val])
            if state.best_val is None or val < state.best_val - 1e-6:
                state.best_val, state.bad_evals = val, 0
                if hp.early_stopping_patience:
                    best_weights = methods.trainable_state(accelerator.unwrap_model(model))
            else:
                state.bad_evals += 1
        state.seconds = time.perf_counter() - started
        if hooks is not None and accelerator.is_main_process:
            hooks.progress(state.step, total, mean, val)
            if hooks.should_stop():
                accelerator.set_trigger()
        if accelerator.check_trigger():
            raise Cancelled(f"{recipe.name}: stopped at update {state.step} of {total}")
        if hp.early_stopping_patience and state.bad_evals >= hp.early_stopping_patience:
            stopped_early = True
            break
        if state.step % hp.checkpoint_every == 0 and state.step < total:
            _save_checkpoint(ckpt_root, state, accelerator, model, optimizer, scheduler)

    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    if best_weights is not None and (stopped_early or state.bad_evals):
        methods.load_trainable_state(unwrapped, best_weights)  # the lowest validation loss
    record = None
    if accelerator.is_main_process:
        unwrapped.eval()
        metrics = _metrics(state, stopped_early, trainable, total)
        if probe_before is not None:
            from tuner import probe

            after = _probe(unwrapped, tok)
            metrics["probe"] = {"before": probe_before, "after": after}
            metrics["probe"].update(probe.compare(probe_before, after))
        record = _register(registry, recipe, job_dir, unwrapped, tok, metrics, parent)
        shutil.rmtree(ckpt_root, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return record


# ---- data -------------------------------------------------------------------------------------
def _encoded(path: Path, tok: Any, max_length: int) -> list[dict[str, list[int]]]:
    from tuner import data as tdata

    if not path.is_file() or path.stat().st_size == 0:  # an empty split (no validation)
        return []
    return [tdata.encode(e, tok, max_length) for e in tdata.read_jsonl(path, format="chat")]


def _val_loss(model: Any, val_set: list[Any], collate: Any, batch_size: int, acc: Any) -> float:
    """Token-weighted mean loss over the whole validation split (every process sees all of it)."""
    import torch

    model.eval()
    total = count = 0.0
    with torch.no_grad():
        for start in range(0, len(val_set), batch_size):
            batch = {
                k: v.to(acc.device) for k, v in collate(val_set[start : start + batch_size]).items()
            }
            n = float((batch["labels"][:, 1:] != -100).sum())  # tokens the shifted loss counts
            total += float(model(**batch).loss) * n
            count += n
    model.train()
    return total / max(count, 1.0)


# ---- schedule ---------------------------------------------------------------------------------
def _scheduler(optimizer: Any, name: str, warmup: int, total: int) -> Any:
    from transformers import get_scheduler

    kind = "constant_with_warmup" if name == "constant" else name
    return get_scheduler(kind, optimizer, num_warmup_steps=warmup, num_training_steps=total)


# ---- checkpoints ------------------------------------------------------------------------------
def _latest_checkpoint(root: Path) -> Path | None:
    pointer = root / "latest.json"
    if not pointer.is_file():
        return None
    folder = root / json.loads(pointer.read_text())["folder"]
    return folder if (folder / "trainer.json").is_file() else None


def _save_checkpoint(
    root: Path, state: _State, accelerator: Any, model: Any, optimizer: Any, scheduler: Any
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


def _load_checkpoint(folder: Path, model: Any, optimizer: Any, scheduler: Any) -> _State:
    import torch
    from safetensors.torch import load_file

    methods.load_trainable_state(model, load_file(str(folder / "trainable.safetensors")))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    body = json.loads((folder / "trainer.json").read_text())
    scheduler.load_state_dict(body.pop("scheduler"))
    return _State(**body)


# ---- results ----------------------------------------------------------------------------------
def _probe(model: Any, tok: Any) -> dict[str, float]:
    from tuner import probe

    was_training = model.training
    model.eval()
    try:
        return dict(probe.score(model, tok))
    finally:
        model.train(was_training)


def _metrics(state: _State, stopped_early: bool, trainable: int, total: int) -> dict[str, Any]:
    return {
        "updates": state.step,
        "planned_updates": total,
        "train_loss": state.losses[-1][1] if state.losses else None,
        "first_loss": state.losses[0][1] if state.losses else None,
        "val_loss": state.val_losses[-1][1] if state.val_losses else None,
        "best_val_loss": state.best_val,
        "loss_curve": state.losses,
        "val_curve": state.val_losses,
        "stopped_early": stopped_early,
        "trainable_weights": trainable,
        "response_tokens": state.tokens,
        "seconds": round(state.seconds, 2),
    }


def _registry(data_dir: Path) -> Any:
    from tuner.registry import Registry

    return Registry(DataLayout(data_dir).adapters)


def _register(
    registry: Any,
    recipe: Recipe,
    job_dir: Path,
    model: Any,
    tok: Any,
    metrics: dict[str, Any],
    parent: Any,
) -> Any:
    def save(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        if recipe.method == "full":
            tok.save_pretrained(folder)

    return register_adapter(
        registry,
        recipe,
        job_dir,
        save,
        base_model=recipe.base_model or DEFAULT_GENERATOR,
        metrics=metrics,
        parent=parent,
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

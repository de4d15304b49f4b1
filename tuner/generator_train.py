"""Fine-tune the generator on prepared data as a recipe: setup -> train -> save, via accelerate.

``train_generator(recipe, job_dir, data_dir=...)`` reads ``job_dir/data/{train,val}.jsonl``
(written by ``tuner.prepare``), wraps the base model with the recipe's method, and runs AdamW
with gradient accumulation, warmup and a schedule, loss on response tokens only. It evaluates
validation loss every ``eval_every`` updates (early stopping restores the best weights),
checkpoints atomically every ``checkpoint_every`` updates into ``job_dir/checkpoints``
(``tuner.checkpoints``) and resumes from the latest one, scores the forgetting probe before and
after, saves the adapter into the registry and removes the checkpoints. The same code runs in
one process or under ``accelerate launch --num_processes N`` (gloo on CPU, NCCL on GPUs); only
the main process writes. ``tuner.train.train`` is the entry point that picks this recipe.

Knows nothing of HTTP, jobs, the live index or the embedder recipe.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from tuner import methods, probe
from tuner.checkpoints import TrainState, latest_checkpoint, load_checkpoint, save_checkpoint
from tuner.config import Recipe
from tuner.hooks import Cancelled, Hooks, register_adapter
from tuner.layout import DataLayout
from tuner.models import DEFAULT_GENERATOR

log = logging.getLogger(__name__)


def train_generator(
    recipe: Recipe,
    job_dir: Path,
    *,
    data_dir: Path,
    hooks: Hooks | None = None,
    resume: bool = True,
    device: str = "auto",
    models_dir: Path | None = None,
    base_path: str | None = None,
) -> Any:
    """Train ``recipe`` on the data prepared in ``job_dir``; return the registry record (None in
    the processes other than the main one). ``models_dir`` holds converted base weights (default
    ``data_dir/models``); ``base_path`` is an explicit local copy of the base model (a folder or
    .gguf file) to use instead of its preset's sources."""
    run = GeneratorRecipe(recipe, job_dir, data_dir=data_dir)
    run.setup(device=device, models_dir=models_dir, base_path=base_path, resume=resume)
    run.train(hooks)
    return run.save()


class GeneratorRecipe:
    """One training run of the generator. ``setup`` builds what ``train`` uses (model, data,
    optimizer, schedule, resumed state); ``save`` registers the result and cleans up."""

    def __init__(self, recipe: Recipe, job_dir: Path, *, data_dir: Path) -> None:
        self.recipe, self.job_dir, self.data_dir = recipe, job_dir, data_dir
        self.hp = recipe.hyperparameters
        self.ckpt_root = job_dir / "checkpoints"
        self.state = TrainState()
        self.best_weights: dict[str, Any] | None = None
        self.stopped_early = False

    # ---- setup ----------------------------------------------------------------------------
    def setup(
        self, *, device: str, models_dir: Path | None, base_path: str | None, resume: bool
    ) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        methods.check_available(self.recipe.method)
        import torch

        # Under ``accelerate launch`` without a GPU, accelerate only forms a (gloo) process group
        # when told cpu=True; otherwise every process would train (and register) alone.
        cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
        self.accelerator = Accelerator(gradient_accumulation_steps=self.hp.grad_accum, cpu=cpu)
        set_seed(self.hp.seed)
        gen = methods.load_base(
            self.recipe.base_model or DEFAULT_GENERATOR,
            cache_dir=models_dir or DataLayout(self.data_dir).models,
            device=self.accelerator.device.type,
            method=self.recipe.method,
            local_path=base_path,
        )
        self.tok = gen.tokenizer
        self._setup_data()
        self._setup_registry()
        self._setup_model(gen.model)
        self._setup_optimizer()
        if resume:
            self._resume()

    def _setup_data(self) -> None:
        from tuner import data as tdata

        data, hp = self.job_dir / "data", self.hp
        self.train_set = _encoded(data / "train.jsonl", self.tok, hp.max_length)
        self.val_set = _encoded(data / "val.jsonl", self.tok, hp.max_length)
        if not self.train_set:
            raise ValueError(f"{self.job_dir}/data/train.jsonl holds no examples")
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        self.collate = partial(tdata.collate, pad_id=pad)

    def _setup_registry(self) -> None:
        from tuner.pgregistry import open_registry

        recipe = self.recipe
        self.registry = open_registry(DataLayout(self.data_dir).adapters)
        self.parent = self.registry.get(recipe.parent) if recipe.parent else None
        if self.parent is not None and self.parent.method != recipe.method:
            raise ValueError(
                f"parent {self.parent.id} was trained with {self.parent.method}, "
                f"not {recipe.method}"
            )

    def _setup_model(self, base: Any) -> None:
        recipe, main = self.recipe, self.accelerator.is_main_process
        self.probe_before = probe.score_in_eval(base, self.tok) if recipe.probe and main else None
        parent_folder = self.registry.folder(self.parent.id) if self.parent else None
        self.model = methods.wrap(base, recipe.method, self.hp, parent_folder)
        self.model.train()
        self.trainable, total = methods.count_trainable(self.model)
        log.info("%s: %d of %d weights trainable", recipe.method, self.trainable, total)

    def _setup_optimizer(self) -> None:
        import torch

        hp, acc = self.hp, self.accelerator
        optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=float(hp.learning_rate or 0.0),  # Recipe.__post_init__ fills in the default
            weight_decay=hp.weight_decay,
        )
        per_epoch = math.ceil(
            math.ceil(len(self.train_set) / (hp.batch_size * acc.num_processes)) / hp.grad_accum
        )
        self.total = hp.max_steps or max(1, math.ceil(per_epoch * hp.epochs))
        warmup = int(hp.warmup_ratio * self.total)
        self.scheduler = _scheduler(optimizer, hp.scheduler, warmup, self.total)
        self.model, self.optimizer = acc.prepare(self.model, optimizer)

    def _resume(self) -> None:
        latest = latest_checkpoint(self.ckpt_root)
        if latest is None:
            return
        model = self.accelerator.unwrap_model(self.model)
        self.state = load_checkpoint(latest, model, self.optimizer, self.scheduler)
        log.info("resuming %s from update %d", self.recipe.name, self.state.step)

    # ---- train ----------------------------------------------------------------------------
    def train(self, hooks: Hooks | None) -> None:
        """Run updates until ``total`` (or early stopping); raise ``Cancelled`` when asked."""
        import torch

        acc, hp, state = self.accelerator, self.hp, self.state
        started = time.perf_counter() - state.seconds
        window: list[float] = []
        tokens = 0  # response tokens in this process since the last update
        for batch in self._batches():
            if state.step >= self.total:
                break
            with acc.accumulate(self.model):
                loss = self.model(**batch).loss
                acc.backward(loss)
                if acc.sync_gradients and hp.max_grad_norm:
                    acc.clip_grad_norm_(self.model.parameters(), hp.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad()
            window.append(float(loss.detach()))
            tokens += int((batch["labels"] != -100).sum())
            if not acc.sync_gradients:
                continue
            self.scheduler.step()
            state.step += 1
            # One collective per update, on the device the backend wants (NCCL refuses CPU
            # tensors): the mean loss over processes and the response tokens of all of them.
            local = torch.tensor([sum(window) / len(window), float(tokens)], device=acc.device)
            summed = acc.reduce(local, "sum").tolist()
            state.tokens += int(summed[1])
            window, tokens = [], 0
            if self._after_update(summed[0] / acc.num_processes, started, hooks):
                break

    def _batches(self) -> Iterator[dict[str, Any]]:
        """Micro-batches, epoch after epoch, from where the resumed state left off."""
        import torch

        acc, hp, state = self.accelerator, self.hp, self.state
        while True:
            loader: Any = torch.utils.data.DataLoader(
                self.train_set,  # type: ignore[arg-type]
                batch_size=hp.batch_size,
                shuffle=True,
                generator=torch.Generator().manual_seed(hp.seed + state.epoch),
                collate_fn=self.collate,
            )
            loader = acc.prepare_data_loader(loader)
            if state.batch_in_epoch:
                loader = acc.skip_first_batches(loader, state.batch_in_epoch)
            for batch in loader:
                state.batch_in_epoch += 1
                yield batch
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0

    def _after_update(self, mean: float, started: float, hooks: Hooks | None) -> bool:
        """Record the update's loss, evaluate, report, checkpoint; True to stop early."""
        acc, hp, state = self.accelerator, self.hp, self.state
        state.losses.append([state.step, mean])
        val = self._evaluate()
        state.seconds = time.perf_counter() - started
        if hooks is not None and acc.is_main_process:
            hooks.progress(state.step, self.total, mean, val)
            if hooks.should_stop():
                acc.set_trigger()
        if acc.check_trigger():
            raise Cancelled(f"{self.recipe.name}: stopped at update {state.step} of {self.total}")
        if hp.early_stopping_patience and state.bad_evals >= hp.early_stopping_patience:
            self.stopped_early = True
            return True
        if state.step % hp.checkpoint_every == 0 and state.step < self.total:
            save_checkpoint(self.ckpt_root, state, acc, self.model, self.optimizer, self.scheduler)
        return False

    def _evaluate(self) -> float | None:
        """Validation loss when one is due (keeping the best weights for early stopping)."""
        hp, state = self.hp, self.state
        if not self.val_set or (state.step % hp.eval_every and state.step != self.total):
            return None
        batch_size = int(hp.batch_size or 1)
        val = _val_loss(self.model, self.val_set, self.collate, batch_size, self.accelerator)
        state.val_losses.append([state.step, val])
        if state.best_val is None or val < state.best_val - 1e-6:
            state.best_val, state.bad_evals = val, 0
            if hp.early_stopping_patience:
                unwrapped = self.accelerator.unwrap_model(self.model)
                self.best_weights = methods.trainable_state(unwrapped)
        else:
            state.bad_evals += 1
        return val

    # ---- save -----------------------------------------------------------------------------
    def save(self) -> Any:
        """Restore the best weights if need be, register the adapter (main process), remove the
        checkpoints and end training; returns the record, or None off the main process."""
        acc, state = self.accelerator, self.state
        acc.wait_for_everyone()
        unwrapped = acc.unwrap_model(self.model)
        if self.best_weights is not None and (self.stopped_early or state.bad_evals):
            methods.load_trainable_state(unwrapped, self.best_weights)  # lowest validation loss
        record = None
        if acc.is_main_process:
            unwrapped.eval()
            metrics = _metrics(state, self.stopped_early, self.trainable, self.total)
            if self.probe_before is not None:
                metrics["probe"] = self._probe_after(unwrapped)
            record = self._register(unwrapped, metrics)
            shutil.rmtree(self.ckpt_root, ignore_errors=True)
        acc.wait_for_everyone()
        acc.end_training()
        return record

    def _probe_after(self, model: Any) -> dict[str, Any]:
        before, after = self.probe_before or {}, probe.score_in_eval(model, self.tok)
        return {"before": before, "after": after, **probe.compare(before, after)}

    def _register(self, model: Any, metrics: dict[str, Any]) -> Any:
        recipe, tok = self.recipe, self.tok

        def save(folder: Path) -> None:
            model.save_pretrained(folder, safe_serialization=True)
            if recipe.method == "full":
                tok.save_pretrained(folder)

        return register_adapter(
            self.registry,
            recipe,
            self.job_dir,
            save,
            base_model=recipe.base_model or DEFAULT_GENERATOR,
            metrics=metrics,
            parent=self.parent,
        )


# ---- data, schedule, results --------------------------------------------------------------
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


def _scheduler(optimizer: Any, name: str, warmup: int, total: int) -> Any:
    from transformers import get_scheduler

    kind = "constant_with_warmup" if name == "constant" else name
    return get_scheduler(kind, optimizer, num_warmup_steps=warmup, num_training_steps=total)


def _metrics(state: TrainState, stopped_early: bool, trainable: int, total: int) -> dict[str, Any]:
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

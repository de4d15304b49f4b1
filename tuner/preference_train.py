"""Preference tuning of the generator as a recipe: kto (unpaired ratings) and dpo (pairs), on
TRL's ``KTOTrainer`` and ``DPOTrainer``.

``train_preference(recipe, job_dir, data_dir=...)`` reads ``job_dir/data/{train,val,test}.jsonl``
(written by ``tuner.prepare.prepare_preferences``) and trains a LoRA adapter: the recipe's
parent continued (the promoted adapter, resolved by whoever submits the run), else a fresh one
on the base model. The reference model is the starting point: TRL keeps a frozen copy of the
parent's adapter as ``ref`` (or disables the adapter when there is no parent), so the loss
measures the move away from what is served now. The forgetting probe is scored before (the
parent) and after. TRL's Trainer writes the checkpoints under ``job_dir/checkpoints``; one is
marked whole (``whole.json``, written last and atomically) only once it is saved, and a run
resumes from the newest whole one. Progress and cancel go through ``tuner.hooks.Hooks``.

After training, reward accuracy on the held-out rows (``test.jsonl``, never trained on): the
implicit reward of a completion is ``log p_tuned - log p_parent`` (summed over its tokens); a
dpo pair is right when its chosen answer's reward beats its rejected one's, a kto row when its
reward's sign matches its label. The parent scores 0.5 by construction (its rewards are 0), so
the eval gate (``eval.gate``) asks whether the tuned adapter beats that.

Knows nothing of HTTP, jobs, the answer log or the live index.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from tuner import methods, probe
from tuner.config import LORA_LIKE, PROMOTED, Recipe
from tuner.data import render
from tuner.durable import atomic_write_text
from tuner.hooks import Cancelled, Hooks, register_adapter
from tuner.layout import DataLayout
from tuner.models import DEFAULT_GENERATOR

log = logging.getLogger(__name__)
WHOLE = "whole.json"  # written into a checkpoint folder once TRL has saved all of it


def train_preference(
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
    """Train ``recipe`` (kto or dpo) on the rows prepared in ``job_dir``; return the registry
    record (None in the processes other than the main one)."""
    import torch

    from tuner import preference_data as pdata
    from tuner.pgregistry import open_registry

    data = job_dir / "data"
    train_rows = _rows(data / "train.jsonl")
    if not train_rows:
        raise ValueError(f"{data}/train.jsonl holds no rows")
    val_rows, test_rows = _rows(data / "val.jsonl"), _rows(data / "test.jsonl")
    if recipe.parent == PROMOTED:
        raise ValueError(
            "parent: 'promoted' is resolved by whoever submits the run (ragtune tune, the jobs "
            "API); name the adapter id here"
        )
    registry = open_registry(DataLayout(data_dir).adapters)
    parent = registry.get(recipe.parent) if recipe.parent else None
    if parent is not None and (parent.method not in LORA_LIKE or parent.component != "generator"):
        raise ValueError(
            f"parent {parent.id} is a {parent.method} {parent.component} model; "
            f"{recipe.method} continues a LoRA generator adapter ({', '.join(LORA_LIKE)})"
        )
    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    gen = methods.load_base(
        recipe.base_model or DEFAULT_GENERATOR,
        cache_dir=models_dir or DataLayout(data_dir).models,
        device="cpu" if cpu else "cuda",
        method="lora",
        local_path=base_path,
    )
    tok = gen.tokenizer
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = _wrap(gen.model, recipe, registry.folder(parent.id) if parent else None)
    probe_before = probe.score_in_eval(model, tok) if recipe.probe else None

    started = time.perf_counter()
    trainer = _trainer(recipe, model, tok, train_rows, val_rows, job_dir, cpu, hooks)
    checkpoint = _whole_checkpoint(job_dir / "checkpoints") if resume else None
    if checkpoint is not None:
        log.info("resuming %s from %s", recipe.name, checkpoint.name)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    watch = next(c for c in trainer.callback_handler.callbacks if isinstance(c, _Watch))
    if watch.cancelled:
        raise Cancelled(f"{recipe.name}: stopped at update {trainer.state.global_step}")
    seconds = time.perf_counter() - started
    if not trainer.is_world_process_zero():
        return None
    policy = trainer.accelerator.unwrap_model(trainer.model)
    policy.eval()
    metrics = _metrics(trainer, watch, seconds, recipe, len(train_rows), len(val_rows))
    metrics["reward"] = reward_accuracy(policy, tok, test_rows)
    if recipe.method == "kto":
        metrics["kto_weights"] = list(pdata.kto_weights(train_rows))
    if probe_before is not None:
        after = probe.score_in_eval(policy, tok)
        metrics["probe"] = {
            "before": probe_before,
            "after": after,
            **probe.compare(probe_before, after),
        }

    def save(folder: Path) -> None:
        policy.save_pretrained(folder, selected_adapters=["default"], safe_serialization=True)

    record = register_adapter(
        registry,
        recipe,
        job_dir,
        save,
        base_model=recipe.base_model or DEFAULT_GENERATOR,
        metrics=metrics,
        parent=parent,
    )
    shutil.rmtree(job_dir / "checkpoints", ignore_errors=True)
    return record


def _rows(path: Path) -> list[Any]:
    from tuner import preference_data as pdata

    if not path.is_file() or path.stat().st_size == 0:
        return []
    return pdata.read_jsonl(path)


def _wrap(base: Any, recipe: Recipe, parent_folder: Path | None) -> Any:
    """The policy: the parent's LoRA, trainable, or a fresh LoRA on the base model."""
    import peft

    if getattr(base.config, "use_cache", None):
        base.config.use_cache = False
    if parent_folder is not None:
        return peft.PeftModel.from_pretrained(base, str(parent_folder), is_trainable=True)
    return peft.get_peft_model(base, methods.peft_config("lora", recipe.hyperparameters))


def _trainer(
    recipe: Recipe,
    model: Any,
    tok: Any,
    train_rows: list[Any],
    val_rows: list[Any],
    job_dir: Path,
    cpu: bool,
    hooks: Hooks | None,
) -> Any:
    """TRL's trainer for the method, configured from the recipe."""
    from datasets import Dataset

    from tuner import preference_data as pdata

    hp, pref = recipe.hyperparameters, recipe.preference
    total_hint = max(1, int(len(train_rows) / (hp.batch_size or 1) / hp.grad_accum * hp.epochs))
    common: dict[str, Any] = {
        "output_dir": str(job_dir / "checkpoints"),
        "per_device_train_batch_size": hp.batch_size,
        "per_device_eval_batch_size": hp.batch_size,
        "gradient_accumulation_steps": hp.grad_accum,
        "learning_rate": float(hp.learning_rate or 0.0),
        "weight_decay": hp.weight_decay,
        "num_train_epochs": hp.epochs,
        "max_steps": hp.max_steps or -1,
        "warmup_steps": int(hp.warmup_ratio * (hp.max_steps or total_hint)),
        "lr_scheduler_type": "constant_with_warmup" if hp.scheduler == "constant" else hp.scheduler,
        "max_grad_norm": hp.max_grad_norm or 0.0,
        "seed": hp.seed,
        "data_seed": hp.seed,
        "max_length": hp.max_length,
        "beta": pref.beta,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": hp.checkpoint_every,
        "save_total_limit": 2,
        "eval_strategy": "steps" if val_rows else "no",
        "eval_steps": hp.eval_every,
        "report_to": [],
        "use_cpu": cpu,
        "bf16": False,
        "fp16": False,
        "gradient_checkpointing": False,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "remove_unused_columns": False,
    }
    train_set = Dataset.from_list([r.trl_columns() for r in train_rows])
    val_set = Dataset.from_list([r.trl_columns() for r in val_rows]) if val_rows else None
    watch = _Watch(hooks)
    if recipe.method == "kto":
        from trl import KTOConfig, KTOTrainer

        desirable, undesirable = pdata.kto_weights(train_rows)
        args: Any = KTOConfig(**common, desirable_weight=desirable, undesirable_weight=undesirable)
        cls: Any = KTOTrainer
    else:
        from trl import DPOConfig, DPOTrainer

        losses: dict[str, Any] = {}
        if pref.sft_weight:  # DPO plus NLL on the chosen answer (RPO)
            losses = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, pref.sft_weight]}
        args, cls = DPOConfig(**common, **losses), DPOTrainer
    trainer = _leaving_cuts_open(cls)(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=val_set,
        processing_class=tok,
        callbacks=[watch, _MarkWhole()],
    )
    watch.accelerator = trainer.accelerator
    return trainer


def _leaving_cuts_open(cls: Any) -> Any:
    """``cls`` (TRL's KTOTrainer or DPOTrainer) tokenizing a completion flagged ``<side>_cut``
    without its end of turn. TRL closes every conversational completion; an answer a token
    limit cut off was never ended by the model, and training its end of turn would teach the
    model to stop where the limit stopped it."""
    from tuner import preference_data as pdata

    class LeavingCutsOpen(cls):  # type: ignore[misc, valid-type]
        def _prepare_dataset(self, dataset: Any, tok: Any, args: Any, name: str) -> Any:
            dataset = super()._prepare_dataset(dataset, tok, args, name)
            end = pdata.closing(tok)
            names = dataset.column_names
            sides = [s for kind in pdata.SIDES.values() for s in kind if f"{s}_cut" in names]
            if not end or not sides:
                return dataset

            def open_(example: dict[str, Any]) -> dict[str, Any]:
                for side in sides:
                    ids = example[f"{side}_ids"]
                    if example[f"{side}_cut"] and ids[-len(end) :] == end and len(ids) > len(end):
                        example[f"{side}_ids"] = ids[: -len(end)]
                return example

            dataset = dataset.map(open_)
            if "KL_completion_ids" in dataset.column_names:  # kto: rotate the opened completions

                def rotate(batch: dict[str, Any]) -> dict[str, Any]:
                    ids = batch["completion_ids"]
                    batch["KL_completion_ids"] = [ids[-1], *ids[:-1]]
                    return batch

                size = args.per_device_train_batch_size
                dataset = dataset.map(rotate, batched=True, batch_size=size)
            return dataset

    return LeavingCutsOpen


def _callback_base() -> Any:
    from transformers import TrainerCallback

    return TrainerCallback


class _Watch(_callback_base()):  # type: ignore[misc]
    """Reports each update to the hooks and stops the run when they ask."""

    def __init__(self, hooks: Hooks | None) -> None:
        self.hooks, self.cancelled = hooks, False
        self.accelerator: Any = None  # the trainer's, set once it exists
        self.loss: float | None = None
        self.val: float | None = None
        self.losses: list[list[float]] = []
        self.val_losses: list[list[float]] = []
        self.first: float | None = None

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
        logs = logs or {}
        if "loss" in logs:
            self.loss = float(logs["loss"])
            self.first = self.loss if self.first is None else self.first
            self.losses.append([state.global_step, self.loss])
            if self.hooks is not None and state.is_world_process_zero:
                self.hooks.progress(state.global_step, state.max_steps, self.loss, None)
        if "eval_loss" in logs:
            self.val = float(logs["eval_loss"])
            self.val_losses.append([state.global_step, self.val])

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        """The main process asks the hooks; every process learns the answer together (one
        collective per update), so all of them stop at the same update."""
        asked = self.hooks is not None and state.is_world_process_zero and self.hooks.should_stop()
        acc = self.accelerator
        if acc is None:
            stop = asked
        else:
            if asked:
                acc.set_trigger()
            stop = acc.check_trigger()
        if stop:
            self.cancelled = True
            control.should_training_stop = True
            control.should_save = False

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kw: Any):
        if self.hooks is not None and state.is_world_process_zero and metrics:
            loss = metrics.get("eval_loss")
            if loss is not None:
                self.hooks.progress(state.global_step, state.max_steps, self.loss or 0.0, loss)


class _MarkWhole(_callback_base()):  # type: ignore[misc]
    """Marks a checkpoint folder whole once the Trainer has written all of it."""

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            atomic_write_text(folder / WHOLE, json.dumps({"step": state.global_step}))


def _whole_checkpoint(root: Path) -> Path | None:
    """The newest checkpoint marked whole; half-written ones are removed."""
    if not root.is_dir():
        return None
    found = []
    for folder in root.glob("checkpoint-*"):
        if (folder / WHOLE).is_file():
            found.append((int(folder.name.rsplit("-", 1)[1]), folder))
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return max(found)[1] if found else None


# ---- reward accuracy ----------------------------------------------------------------------
def completion_logp(
    model: Any, tok: Any, prompt: list[dict[str, str]], completion: str, cut: bool = False
) -> float:
    """Summed log-probability of ``completion`` after ``prompt``, with its end of turn unless
    ``cut`` (a token limit cut it off)."""
    import torch

    from tuner import preference_data as pdata

    start = len(pdata.prompt_ids(tok, prompt))
    turns = [*prompt, {"role": "assistant", "content": completion}]
    full = render(tok, turns, prompt=False, cut=cut)
    device = next(model.parameters()).device
    ids = torch.tensor([full], device=device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    logp = torch.log_softmax(logits, dim=-1)
    target = ids[0, 1:]
    picked = logp.gather(1, target[:, None])[:, 0]
    return float(picked[start - 1 :].sum())


def reward_accuracy(policy: Any, tok: Any, rows: list[Any]) -> dict[str, Any]:
    """Held-out reward accuracy of ``policy`` against its reference (the ``ref`` adapter when
    the run continued a parent, else the adapter disabled): see the module's docstring."""
    if not rows:
        return {"rows": 0, "accuracy": None}
    from trl.trainer.utils import use_adapter

    ref_name = "ref" if "ref" in getattr(policy, "peft_config", {}) else None

    def reward(row: Any, side: str) -> float:
        text, cut = getattr(row, side), side in row.cut
        mine = completion_logp(policy, tok, row.prompt, text, cut)
        with use_adapter(policy, ref_name):
            theirs = completion_logp(policy, tok, row.prompt, text, cut)
        return mine - theirs

    right: list[float] = []
    margins = []
    for row in rows:
        if row.kind == "dpo":
            margin = reward(row, "chosen") - reward(row, "rejected")
        else:
            r = reward(row, "completion")
            margin = r if row.label else -r
        margins.append(margin)
        right.append(1.0 if margin > 0 else 0.5 if margin == 0 else 0.0)
    return {
        "rows": len(rows),
        "accuracy": round(sum(right) / len(right), 4),
        "mean_margin": round(sum(margins) / len(margins), 4),
        "per_row": right,
    }


# ---- probe and results ----------------------------------------------------------------------
def _metrics(
    trainer: Any, watch: _Watch, seconds: float, recipe: Recipe, n_train: int, n_val: int
) -> dict[str, Any]:
    state = trainer.state
    return {
        "method": recipe.method,
        "updates": state.global_step,
        "planned_updates": state.max_steps,
        "train_loss": watch.loss,
        "first_loss": watch.first,
        "val_loss": watch.val,
        "loss_curve": watch.losses,
        "val_curve": watch.val_losses,
        "train_rows": n_train,
        "val_rows": n_val,
        "trainable_weights": methods.count_trainable(trainer.model)[0],
        "seconds": round(seconds, 2),
    }

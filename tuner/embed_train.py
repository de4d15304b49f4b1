"""Fine-tune the embedder on (query, positive, negatives) pairs with sentence-transformers.

MultipleNegativesRankingLoss (in-batch negatives plus mined hard negatives; the cached variant
for large batches), full fine-tuning or a PEFT LoRA adapter on the embedder, and an
InformationRetrievalEvaluator on a held-out split scored before and after.
``train_retriever(recipe, job_dir, data_dir=...)`` is the retriever tuner's training step: it
reads the pairs ``tuner.prepare.prepare_pairs`` wrote, trains, and saves the embedder into the
adapter registry (component ``retriever``, with lineage). The same code runs in one process
or under ``accelerate launch --num_processes N`` (gloo on CPU, NCCL on GPUs): each process takes
its share of every global batch, the loss gathers every process's embeddings so the in-batch
negatives are the whole global batch, and only the main process evaluates and registers. Knows
nothing of the live index, re-embedding or HTTP: the caller re-embeds the index with the result.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tuner.config import Recipe
from tuner.hooks import Cancelled, register_adapter
from tuner.layout import DataLayout
from tuner.pairs import Pair, read_pairs

log = logging.getLogger(__name__)


def ir_evaluator(pairs: Sequence[Pair], name: str = "held-out") -> Any:
    """Each query must find its own positive among every positive and negative of ``pairs``."""
    from sentence_transformers.sentence_transformer.evaluation import (
        InformationRetrievalEvaluator,
    )

    corpus: dict[str, Any] = {}
    index: dict[str, str] = {}

    def doc(text: str) -> str:
        if text not in index:
            index[text] = f"d{len(index)}"
            corpus[index[text]] = text
        return index[text]

    queries: dict[str, Any] = {}
    relevant: dict[str, set[str]] = {}
    for i, p in enumerate(pairs):
        queries[f"q{i}"] = p.query
        relevant[f"q{i}"] = {doc(p.positive)}
        for neg in p.negatives:
            doc(neg)
    return InformationRetrievalEvaluator(
        queries,
        corpus,
        relevant,
        name=name,
        accuracy_at_k=[1, 10],
        precision_recall_at_k=[1, 10],
        mrr_at_k=[10],
        ndcg_at_k=[10],
        map_at_k=[10],
        show_progress_bar=False,
    )


def _recall(scores: dict[str, float], k: int = 10) -> float | None:
    hits = [v for key, v in scores.items() if key.endswith(f"recall@{k}")]
    return float(hits[0]) if hits else None


def train_embedder(
    model: Any,
    train: Sequence[Pair],
    held_out: Sequence[Pair],
    *,
    out_dir: Path,
    method: str = "full",
    learning_rate: float = 2e-5,
    batch_size: int = 16,
    epochs: float = 1.0,
    max_steps: int = -1,
    rank: int = 8,
    cached: bool = False,
    seed: int = 42,
    hooks: Any = None,
) -> dict[str, Any]:
    """Train ``model`` (a SentenceTransformer) in place; returns the evaluator's scores before
    and after, and recall@10 of each. ``hooks`` (``progress``, ``should_stop``) are called
    every update; a stop request raises ``tuner.hooks.Cancelled``. Under ``accelerate launch``
    ``batch_size`` is per process and only the main process evaluates (the others return no
    scores)."""
    from accelerate import PartialState
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer import losses
    from transformers import set_seed

    if method not in ("full", "lora"):
        raise ValueError(f"method: full or lora for the embedder, got {method!r}")
    if not train:
        raise ValueError("no training pairs")
    # Under ``accelerate launch`` on CPU accelerate only forms a (gloo) process group when told
    # cpu=True; otherwise every process would train (and register) alone.
    cpu = model.device.type == "cpu"
    state = PartialState(cpu=cpu)
    processes, main = state.num_processes, state.is_main_process
    set_seed(seed)  # the LoRA's initial weights too
    if method == "lora":
        _add_lora(model, rank)
    columns, hardest = _columns(train)
    evaluator = ir_evaluator(held_out) if held_out and main else None
    before = dict(evaluator(model)) if evaluator else {}
    loss_cls = (
        losses.CachedMultipleNegativesRankingLoss if cached else losses.MultipleNegativesRankingLoss
    )
    watch = _Watch(hooks)
    args = _training_args(
        out_dir, epochs, max_steps, batch_size, learning_rate, seed, processes=processes, cpu=cpu
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict(columns),
        # each process scores its anchors against every process's positives and negatives
        loss=loss_cls(model, gather_across_devices=processes > 1),
        callbacks=[watch.callback()],
    )
    started = time.perf_counter()
    trainer.train()
    if watch.stopped:
        raise Cancelled("stopped on request")
    after = dict(evaluator(model)) if evaluator else {}
    return {
        "before": before,
        "after": after,
        "recall@10_before": _recall(before),
        "recall@10_after": _recall(after),
        "pairs": len(train),
        "hard_negatives_per_pair": hardest,
        "updates": watch.step,
        "first_loss": watch.first_loss,
        "train_loss": watch.loss,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _add_lora(model: Any, rank: int) -> None:
    """Wrap the embedder's transformer in a PEFT LoRA adapter (peft directly: transformers'
    add_adapter wants a newer peft)."""
    from peft import LoraConfig, TaskType, get_peft_model

    from retriever.embedder import set_inner_model

    config = LoraConfig(task_type=TaskType.FEATURE_EXTRACTION, r=rank, lora_alpha=2 * rank)
    set_inner_model(model[0], get_peft_model(model[0].auto_model, config))


def _columns(train: Sequence[Pair]) -> tuple[dict[str, list[str]], int]:
    """The trainer's columns (anchor, positive, negative_i) and how many negatives each has:
    as many negative columns as every pair has."""
    hardest = min(len(p.negatives) for p in train)
    columns: dict[str, list[str]] = {
        "anchor": [p.query for p in train],
        "positive": [p.positive for p in train],
    }
    for i in range(hardest):
        columns[f"negative_{i}"] = [p.negatives[i] for p in train]
    return columns, hardest


def _training_args(
    out_dir: Path,
    epochs: float,
    max_steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    *,
    processes: int = 1,
    cpu: bool = False,
) -> Any:
    """The trainer's arguments. With several processes the sampler draws global batches of
    ``batch_size x processes`` (no text twice in the global batch, whose embeddings the loss
    gathers) and accelerate splits each into one batch per process; a last, short global batch
    is dropped, since every process must gather the same number of embeddings."""
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    spread = processes > 1
    return SentenceTransformerTrainingArguments(
        output_dir=str(out_dir),
        num_train_epochs=epochs,
        max_steps=max_steps,
        per_device_train_batch_size=batch_size * processes,  # split: batch_size per process
        accelerator_config={"split_batches": spread},
        dataloader_drop_last=spread,
        use_cpu=cpu,
        learning_rate=learning_rate,
        warmup_ratio=0.1,
        seed=seed,
        save_strategy="no",
        report_to="none",
        logging_steps=10,
        disable_tqdm=True,
        batch_sampler=BatchSamplers.NO_DUPLICATES,  # a repeated text is a false negative
    )


class _Watch:
    """Relays the trainer's steps and losses to the job hooks and stops it when asked."""

    def __init__(self, hooks: Any) -> None:
        self.hooks = hooks
        self.step = 0
        self.loss: float | None = None
        self.first_loss: float | None = None
        self.stopped = False

    def callback(self) -> Any:
        from transformers import TrainerCallback

        watch = self

        class Relay(TrainerCallback):  # type: ignore[misc]
            def on_log(
                self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any
            ) -> None:
                if logs and "loss" in logs:
                    watch.loss = float(logs["loss"])
                    if watch.first_loss is None:
                        watch.first_loss = watch.loss

            def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
                watch.step = state.global_step
                if watch.hooks is None:
                    return
                loss = watch.loss if watch.loss is not None else float("nan")
                watch.hooks.progress(state.global_step, state.max_steps, loss, None)
                if watch.hooks.should_stop():
                    watch.stopped = True
                    control.should_training_stop = True

        return Relay()


def trained_languages(pairs: Sequence[Pair], share: float = 0.2) -> list[str]:
    """The languages of the training queries: zh when at least ``share`` of them hold Chinese
    characters, en when at least ``share`` are mostly Latin letters."""
    from retriever.sparse import CJK

    if not pairs:
        return []
    zh = sum(1 for p in pairs if CJK.search(p.query)) / len(pairs)
    latin = sum(
        1 for p in pairs if sum(c.isascii() and c.isalpha() for c in p.query) > len(p.query) / 2
    ) / len(pairs)
    return [lang for lang, s in (("en", latin), ("zh", zh)) if s >= share]


def train_retriever(
    recipe: Recipe,
    job_dir: Path,
    *,
    data_dir: Path,
    hooks: Any = None,
    device: str = "auto",
    embedder_path: str | None = None,
    offline: bool | None = None,
    **_: Any,
) -> Any:
    """Train the embedder named by ``recipe.base_model`` (or continue its ``parent``) on
    ``job_dir/data/{train,val}.jsonl`` and save it in the registry; returns the record (None in
    the processes other than the main one). A job that is started again trains from the start
    (minutes on a CPU; no checkpoints)."""
    from accelerate import PartialState

    from retriever.embedder import DEFAULT_EMBEDDER
    from tuner.pgregistry import open_registry

    hp, rt = recipe.hyperparameters, recipe.retriever
    base = recipe.base_model or DEFAULT_EMBEDDER
    train = read_pairs(job_dir / "data" / "train.jsonl")
    val_file = job_dir / "data" / "val.jsonl"
    held_out = read_pairs(val_file) if val_file.is_file() and val_file.stat().st_size else []
    registry = open_registry(DataLayout(data_dir).adapters)
    parent = registry.get(recipe.parent) if recipe.parent else None
    model = _load(registry, parent, base, _process_device(device), embedder_path, offline).model
    assert hp.learning_rate is not None and hp.batch_size is not None  # set by Recipe
    metrics = train_embedder(
        model,
        train,
        held_out,
        out_dir=job_dir / "trainer",
        method=recipe.method,
        learning_rate=hp.learning_rate,
        batch_size=hp.batch_size,
        epochs=hp.epochs,
        max_steps=hp.max_steps or -1,
        rank=hp.rank,
        cached=rt.cached,
        seed=hp.seed,
        hooks=hooks,
    )
    state, record = PartialState(), None
    if state.is_main_process:
        metrics["trained_languages"] = trained_languages(train)
        record = _register(registry, recipe, job_dir, model, metrics, parent, base)
        shutil.rmtree(job_dir / "trainer", ignore_errors=True)
        log.info(
            "embedder %s saved: held-out recall@10 %s -> %s",
            record.id,
            metrics["recall@10_before"],
            metrics["recall@10_after"],
        )
    state.wait_for_everyone()
    state.destroy_process_group()  # what Accelerator.end_training does: the launch exits cleanly
    return record


def _process_device(device: str) -> str:
    """The device this process trains on: ``device`` (``auto`` resolved) or, under ``accelerate
    launch`` on GPUs, this process's own GPU. Forms the process group when launched so."""
    from accelerate import PartialState

    from tuner.models import pick_device

    device = pick_device(device)
    state = PartialState(cpu=device == "cpu")
    return device if device == "cpu" or state.num_processes == 1 else str(state.device)


def _load(
    registry: Any,
    parent: Any,
    base: str,
    device: str,
    embedder_path: str | None,
    offline: bool | None,
) -> Any:
    """The embedder to train: the base model, or the ``parent`` embedder to continue."""
    from retriever.embedder import load_embedder, load_tuned_embedder
    from tuner.models import pick_device

    device = pick_device(device)
    if parent is None:
        return load_embedder(base, device=device, local_path=embedder_path, offline=offline)
    if parent.component != "retriever":
        raise ValueError(f"parent {parent.id} is a {parent.component} adapter, not an embedder")
    return load_tuned_embedder(
        registry.folder(parent.id),
        parent.id,
        method=parent.method,
        base=parent.base_model,
        device=device,
        base_path=embedder_path,
        offline=offline,
    )


def _register(
    registry: Any,
    recipe: Recipe,
    job_dir: Path,
    model: Any,
    metrics: dict[str, Any],
    parent: Any,
    base: str,
) -> Any:
    """Save the trained embedder (the LoRA adapter alone, or the whole model) in the registry."""

    def save(folder: Path) -> None:
        if recipe.method == "lora":
            inner: Any = model[0].auto_model
            inner.save_pretrained(folder, safe_serialization=True)
        else:
            model.save(str(folder), safe_serialization=True, create_model_card=False)

    return register_adapter(
        registry,
        recipe,
        job_dir,
        save,
        component="retriever",
        base_model=parent.base_model if parent is not None else base,
        metrics=metrics,
        parent=parent,
    )

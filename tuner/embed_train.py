"""Fine-tune the embedder on (query, positive, negatives) pairs with sentence-transformers.

MultipleNegativesRankingLoss (in-batch negatives plus mined hard negatives; the cached variant
for large batches), full fine-tuning or a PEFT LoRA adapter on the embedder, and an
InformationRetrievalEvaluator on a held-out split scored before and after. Knows nothing of
the live index, re-embedding or jobs (issue 6 groundwork, not wired to them yet).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tuner.pairs import Pair

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
) -> dict[str, Any]:
    """Train ``model`` (a SentenceTransformer) in place; returns the evaluator's scores before
    and after, and recall@10 of each."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer import losses
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    if method not in ("full", "lora"):
        raise ValueError(f"method: full or lora for the embedder, got {method!r}")
    if not train:
        raise ValueError("no training pairs")
    if method == "lora":  # peft directly: transformers' add_adapter wants a newer peft
        from peft import LoraConfig, TaskType, get_peft_model

        model[0].auto_model = get_peft_model(
            model[0].auto_model,
            LoraConfig(task_type=TaskType.FEATURE_EXTRACTION, r=rank, lora_alpha=2 * rank),
        )
    hardest = min(len(p.negatives) for p in train)
    columns: dict[str, list[str]] = {
        "anchor": [p.query for p in train],
        "positive": [p.positive for p in train],
    }
    for i in range(hardest):  # as many negative columns as every pair has
        columns[f"negative_{i}"] = [p.negatives[i] for p in train]
    evaluator = ir_evaluator(held_out) if held_out else None
    before = dict(evaluator(model)) if evaluator else {}
    loss_cls = (
        losses.CachedMultipleNegativesRankingLoss if cached else losses.MultipleNegativesRankingLoss
    )
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out_dir),
        num_train_epochs=epochs,
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_ratio=0.1,
        seed=seed,
        save_strategy="no",
        report_to="none",
        logging_steps=10,
        disable_tqdm=True,
        batch_sampler=BatchSamplers.NO_DUPLICATES,  # a repeated text is a false negative
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict(columns),
        loss=loss_cls(model),
    )
    trainer.train()
    after = dict(evaluator(model)) if evaluator else {}
    return {
        "before": before,
        "after": after,
        "recall@10_before": _recall(before),
        "recall@10_after": _recall(after),
        "pairs": len(train),
        "hard_negatives_per_pair": hardest,
    }

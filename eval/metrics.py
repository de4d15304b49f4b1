"""Retrieval metrics as pure functions over ranked ids and relevance sets."""

from __future__ import annotations

import math
from collections.abc import Sequence


def dedupe(ids: Sequence[str]) -> list[str]:
    """Keep the first occurrence of each id (chunk hits -> document ranking)."""
    seen: set[str] = set()
    return [i for i in ids if not (i in seen or seen.add(i))]  # type: ignore[func-returns-value]


def recall_at(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    if not relevant:
        raise ValueError("relevant set is empty")
    return len(set(ranked[:k]) & relevant) / len(relevant)


def reciprocal_rank(ranked: Sequence[str], relevant: set[str], k: int = 10) -> float:
    for rank, doc in enumerate(ranked[:k], 1):
        if doc in relevant:
            return 1.0 / rank
    return 0.0


def retrieval_report(
    runs: dict[str, list[str]], qrels: dict[str, set[str]], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Mean recall@k and MRR@10 over the queries in ``qrels``."""
    n = len(qrels)
    if n == 0:
        raise ValueError("no queries with relevance judgements")
    report = {
        f"recall@{k}": sum(recall_at(runs.get(q, []), rel, k) for q, rel in qrels.items()) / n
        for k in ks
    }
    report["mrr@10"] = sum(reciprocal_rank(runs.get(q, []), rel) for q, rel in qrels.items()) / n
    return report


def ndcg_at(ranked: Sequence[str], relevant: set[str], k: int = 10) -> float:
    """Binary-relevance nDCG@k."""
    if not relevant:
        raise ValueError("relevant set is empty")
    dcg = sum(1.0 / math.log2(rank + 1) for rank, d in enumerate(ranked[:k], 1) if d in relevant)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(relevant), k) + 1))
    return dcg / ideal

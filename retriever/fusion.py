"""Fuse ranked lists: reciprocal rank fusion and weighted min-max-normalised scores. Pure."""

from __future__ import annotations

import numpy as np

Ranked = list[tuple[int, float]]


def rrf(lists: list[tuple[float, Ranked]], k: int = 60) -> Ranked:
    """Weighted reciprocal rank fusion: sum of weight / (k + rank) over the lists."""
    fused: dict[int, float] = {}
    for weight, ranked in lists:
        for rank, (cid, _) in enumerate(ranked):
            fused[cid] = fused.get(cid, 0.0) + weight / (k + rank + 1)
    return sorted(fused.items(), key=lambda kv: -kv[1])


def weighted(lists: list[tuple[float, Ranked]]) -> Ranked:
    """Sum of weight * min-max-normalised score; a list's missing items count as 0, and a list
    whose scores are all equal (one item, say) gives each of them 1."""
    fused: dict[int, float] = {}
    for weight, ranked in lists:
        if not ranked:
            continue
        values = np.array([s for _, s in ranked], dtype=np.float64)
        lo, span = float(values.min()), float(np.ptp(values))
        for cid, s in ranked:
            norm = (s - lo) / span if span > 0 else 1.0
            fused[cid] = fused.get(cid, 0.0) + weight * norm
    return sorted(fused.items(), key=lambda kv: -kv[1])

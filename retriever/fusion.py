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


def pick_share(scores: dict[float, np.ndarray], z: float = 1.645) -> tuple[float, str]:
    """The dense share to fuse with, from per-query scores under each share (0 = sparse only,
    1 = dense only, both required): the share with the best mean when it beats the better single
    side by more than ``z`` standard errors of the paired differences (one-sided, 95% by
    default), else that single side, so fusion is never chosen on noise. Returns the share and
    why."""
    if 0.0 not in scores or 1.0 not in scores:
        raise ValueError("scores must hold the single sides, shares 0.0 and 1.0")
    single = max((0.0, 1.0), key=lambda w: float(scores[w].mean()))
    best = max(sorted(scores), key=lambda w: float(scores[w].mean()))
    if best == single:
        return single, "no fused share beats the better single side"
    diff = scores[best] - scores[single]  # (n_queries,)
    se = float(diff.std(ddof=1)) / np.sqrt(len(diff)) if len(diff) > 1 else float("inf")
    if float(diff.mean()) > z * se:
        return best, f"beats the better single side by {diff.mean():.3f} (se {se:.3f})"
    return single, f"share {best:.1f} beats the better single side by {diff.mean():.3f}, " + (
        f"within noise (se {se:.3f})"
    )

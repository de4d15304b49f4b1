"""Paired bootstrap statistics over per-question scores.

Every interval in a run is drawn from one matrix of resampled question indices (fixed by the
seed), so the interval of each mode and of each difference between two modes resample the same
questions together, and the same seed and scores give the same numbers. The matrix is never held
whole: ``Resamples`` draws it a chunk of rows at a time (about ``CHUNK_ELEMENTS`` indices), the
same rows one whole draw gives, so 100,000 resamples of a million questions fit in tens of MB.
A score may be None (the metric does not apply to that question, e.g. groundedness with no
passages): means skip it, and a difference uses the questions both modes scored. Knows nothing
of models or metrics' meaning beyond which way is better.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np

LOWER_IS_BETTER = frozenset({"latency_s"})
Scores = Sequence[float | None]
CHUNK_ELEMENTS = 2**20  # indices drawn at once: 8 MiB of int64, and as much again gathered


@dataclass(frozen=True)
class Resamples:
    """``count`` resamples of ``n`` question indices drawn with replacement from ``seed``: the
    rows of a (count, n) matrix, drawn again on every pass a chunk of rows at a time. The rows
    are those of ``default_rng(seed).integers(0, n, size=(count, n))``: the generator's stream
    does not depend on how the draw is cut."""

    n: int
    count: int
    seed: int

    @property
    def rows_per_chunk(self) -> int:
        return max(1, CHUNK_ELEMENTS // self.n)

    def chunks(self) -> Iterator[np.ndarray]:
        """(rows, n) blocks of the matrix, in order."""
        rng = np.random.default_rng(self.seed)
        step = self.rows_per_chunk
        for start in range(0, self.count, step):
            yield rng.integers(0, self.n, size=(min(step, self.count - start), self.n))


def resample_indices(n: int, resamples: int, seed: int) -> Resamples:
    """The resamples of ``n`` questions every interval of one run shares (nothing drawn yet)."""
    if n < 1:
        raise ValueError("nothing to resample: no questions")
    return Resamples(n, resamples, seed)


def _arrays(scores: Scores) -> tuple[np.ndarray, np.ndarray]:
    present = np.array([s is not None for s in scores], dtype=bool)
    values = np.array([0.0 if s is None else float(s) for s in scores], dtype=float)
    return values, present


def _resampled_means(values: np.ndarray, present: np.ndarray, draws: Resamples) -> np.ndarray:
    """The mean of the present values in each resample that holds any, in resample order."""
    if len(values) != draws.n:
        raise ValueError(f"{len(values)} scores for resamples of {draws.n} questions")
    weighted = values * present
    means = []
    for idx in draws.chunks():  # (rows, n)
        counts = present[idx].sum(axis=1)  # (rows,)
        sums = weighted[idx].sum(axis=1)
        means.append(sums[counts > 0] / counts[counts > 0])
    return np.concatenate(means)


def _ci(means: np.ndarray) -> tuple[float, float]:
    low, high = np.quantile(means, [0.025, 0.975])
    return float(low), float(high)


def interval(scores: Scores, idx: Resamples) -> dict[str, Any] | None:
    """Mean and 95% percentile interval of the scores present; None when none is."""
    values, present = _arrays(scores)
    if not present.any():
        return None
    low, high = _ci(_resampled_means(values, present, idx))
    return {
        "mean": float(values[present].mean()),
        "ci_low": low,
        "ci_high": high,
        "n": int(present.sum()),
    }


def paired(a: Scores, b: Scores, idx: Resamples, lower_is_better: bool = False) -> dict | None:
    """Mean of ``b - a`` over questions both scored, its interval, and which one is better
    (only when the interval excludes zero)."""
    if len(a) != len(b):
        raise ValueError("paired scores need two equally long lists")
    va, pa = _arrays(a)
    vb, pb = _arrays(b)
    both = pa & pb
    if not both.any():
        return None
    diffs = vb - va
    low, high = _ci(_resampled_means(diffs, both, idx))
    gain_b = low > 0 if not lower_is_better else high < 0
    gain_a = high < 0 if not lower_is_better else low > 0
    return {
        "mean_diff": float(diffs[both].mean()),
        "ci_low": low,
        "ci_high": high,
        "b_wins": float((diffs[both] > 0).mean()),
        "n": int(both.sum()),
        "better": "b" if gain_b else "a" if gain_a else None,
    }


def summarize(
    per_mode: Mapping[str, Mapping[str, Scores]], resamples: int, seed: int
) -> dict[str, Any]:
    """Intervals per mode and metric, every pairwise difference, and the best mode per metric.

    ``per_mode[mode][metric]`` lists one score per question, in the same question order for
    every mode."""
    modes = list(per_mode)
    lengths = {len(v) for m in modes for v in per_mode[m].values()}
    if len(lengths) != 1:
        raise ValueError(f"every mode and metric needs one score per question; got {lengths}")
    idx = resample_indices(lengths.pop(), resamples, seed)
    metrics = {
        mode: {k: ci for k, v in per_mode[mode].items() if (ci := interval(v, idx)) is not None}
        for mode in modes
    }
    comparisons = []
    names = dict.fromkeys(k for m in modes for k in per_mode[m])
    for metric in names:
        for a, b in combinations(modes, 2):
            if metric not in per_mode[a] or metric not in per_mode[b]:
                continue
            d = paired(per_mode[a][metric], per_mode[b][metric], idx, metric in LOWER_IS_BETTER)
            if d is not None:
                winner = {"a": a, "b": b}.get(d.pop("better") or "")
                comparisons.append({"metric": metric, "a": a, "b": b, **d, "better": winner})
    return {
        "metrics": metrics,
        "comparisons": comparisons,
        "best": best_modes(metrics, comparisons),
    }


def best_modes(metrics: dict[str, Any], comparisons: list[dict[str, Any]]) -> dict[str, Any]:
    """Per metric: the mode with the best mean and the modes it is significantly better than."""
    best: dict[str, Any] = {}
    names = dict.fromkeys(k for by_metric in metrics.values() for k in by_metric)
    for metric in names:
        scored = {m: v[metric]["mean"] for m, v in metrics.items() if metric in v}
        sign = -1 if metric in LOWER_IS_BETTER else 1
        top = max(scored, key=lambda m: sign * scored[m])
        beaten = [
            c["b"] if c["a"] == top else c["a"]
            for c in comparisons
            if c["metric"] == metric and c["better"] == top
        ]
        best[metric] = {"mode": top, "significant_over": beaten}
    return best


def share_interval(hits: Sequence[bool], resamples: int, seed: int) -> dict[str, Any] | None:
    """Interval of a share (e.g. of answers that obeyed an injected instruction)."""
    if not hits:
        return None
    return interval([float(h) for h in hits], resample_indices(len(hits), resamples, seed))

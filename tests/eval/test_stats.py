from __future__ import annotations

import random
import tracemalloc
from typing import Any

import numpy as np
import pytest

from eval import stats
from eval.stats import interval, paired, resample_indices, share_interval, summarize


def _scores(seed: int, n: int = 80, shift: float = 0.0) -> list[float]:
    rng = random.Random(seed)
    return [min(1.0, max(0.0, rng.random() * 0.6 + shift)) for _ in range(n)]


def test_same_seed_same_numbers_and_another_seed_other_intervals() -> None:
    per_mode = {"rag": {"token_f1": _scores(1)}, "hybrid": {"token_f1": _scores(2, shift=0.05)}}
    first = summarize(per_mode, resamples=2000, seed=7)
    again = summarize(per_mode, resamples=2000, seed=7)
    other = summarize(per_mode, resamples=2000, seed=8)
    assert first == again
    assert (
        first["metrics"]["rag"]["token_f1"]["mean"] == other["metrics"]["rag"]["token_f1"]["mean"]
    )
    assert (
        first["metrics"]["rag"]["token_f1"]["ci_low"]
        != other["metrics"]["rag"]["token_f1"]["ci_low"]
    )


def test_better_only_when_the_interval_of_the_difference_excludes_zero() -> None:
    a = _scores(3)
    gain = [x + 0.05 for x in a]
    noise = [x + random.Random(i).choice((-0.05, 0.05)) for i, x in enumerate(a)]
    idx = resample_indices(len(a), 2000, 0)
    up = paired(a, gain, idx)
    assert up is not None and up["better"] == "b" and up["ci_low"] > 0
    assert up["mean_diff"] == pytest.approx(0.05)
    flat = paired(a, noise, idx)
    assert flat is not None and flat["ci_low"] <= 0 <= flat["ci_high"] and flat["better"] is None
    down = paired(gain, a, idx)
    assert down is not None and down["better"] == "a"


def test_latency_is_better_when_lower() -> None:
    slow, fast = [2.0 + i % 3 * 0.1 for i in range(40)], [1.0 + i % 3 * 0.1 for i in range(40)]
    summary = summarize({"rag": {"latency_s": slow}, "base": {"latency_s": fast}}, 1000, 0)
    (c,) = summary["comparisons"]
    assert c["better"] == "base" and c["mean_diff"] == pytest.approx(-1.0)
    assert summary["best"]["latency_s"] == {"mode": "base", "significant_over": ["rag"]}


def test_missing_scores_are_skipped_and_pairs_use_shared_questions() -> None:
    a = [0.2, None, 0.4, 0.6]
    b = [0.3, 0.9, None, 0.7]
    summary = summarize({"a": {"m": a}, "b": {"m": b}}, 500, 0)
    assert summary["metrics"]["a"]["m"]["n"] == 3
    assert summary["metrics"]["a"]["m"]["mean"] == pytest.approx(0.4)
    (c,) = summary["comparisons"]
    assert c["n"] == 2 and c["mean_diff"] == pytest.approx(0.1)


def test_best_mode_names_the_modes_it_significantly_beats() -> None:
    low = _scores(4)
    per_mode = {
        "base": {"f1": low},
        "rag": {"f1": [x + 0.2 for x in low]},
        "hybrid": {"f1": [x + 0.2 + (0.01 if i % 2 else -0.01) for i, x in enumerate(low)]},
    }
    best = summarize(per_mode, 2000, 0)["best"]["f1"]
    assert best["mode"] in ("rag", "hybrid") and best["significant_over"] == ["base"]


def test_unequal_lengths_and_empty_input_are_errors() -> None:
    with pytest.raises(ValueError):
        summarize({"a": {"m": [0.1, 0.2]}, "b": {"m": [0.1]}}, 500, 0)
    with pytest.raises(ValueError):
        resample_indices(0, 100, 0)
    assert share_interval([], 100, 0) is None
    share = share_interval([True, False, False, False], 1000, 0)
    assert share is not None and share["mean"] == 0.25 and share["ci_low"] < 0.25 < share["ci_high"]


def _whole_matrix_interval(scores: list[float | None], n: int, resamples: int, seed: int) -> Any:
    """The interval as it was computed before chunking: one (resamples, n) matrix at once."""
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    values = np.array([0.0 if s is None else s for s in scores])
    present = np.array([s is not None for s in scores])
    counts, sums = present[idx].sum(axis=1), (values * present)[idx].sum(axis=1)
    means = sums[counts > 0] / counts[counts > 0]
    return [float(q) for q in np.quantile(means, [0.025, 0.975])]


def test_chunked_resamples_give_the_numbers_of_the_whole_matrix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stats, "CHUNK_ELEMENTS", 50)  # 1 row of 37 questions per chunk
    a = [None if i % 5 == 0 else s for i, s in enumerate(_scores(9, n=37))]
    b = _scores(10, n=37, shift=0.1)
    draws = resample_indices(37, 1003, 11)
    assert draws.rows_per_chunk == 1
    got = interval(a, draws)
    assert got is not None and [got["ci_low"], got["ci_high"]] == _whole_matrix_interval(
        a, 37, 1003, 11
    )
    diffs: list[float | None] = [None if x is None else y - x for x, y in zip(a, b, strict=True)]
    both = paired(a, b, draws)
    assert both is not None
    assert [both["ci_low"], both["ci_high"]] == _whole_matrix_interval(diffs, 37, 1003, 11)
    monkeypatch.setattr(stats, "CHUNK_ELEMENTS", 37 * 1003)  # the whole matrix in one chunk
    assert interval(a, resample_indices(37, 1003, 11)) == got


def test_the_largest_runs_draw_a_bounded_chunk_at_a_time() -> None:
    draws = stats.Resamples(n=100_000, count=100_000, seed=0)  # nothing drawn yet
    assert draws.rows_per_chunk * draws.n <= stats.CHUNK_ELEMENTS <= 2**21
    first = next(draws.chunks())
    assert first.shape == (draws.rows_per_chunk, 100_000)
    most = stats.Resamples(n=1_000_000, count=100_000, seed=0)  # eval's limit on questions
    assert most.rows_per_chunk == 1 and most.n <= 2 * stats.CHUNK_ELEMENTS


def test_an_interval_over_a_large_matrix_stays_within_a_few_tens_of_megabytes() -> None:
    scores: list[float | None] = [float(i % 7) for i in range(20_000)]
    draws = resample_indices(len(scores), 2000, 0)  # the whole matrix: 320 MB of int64
    tracemalloc.start()
    try:
        got = interval(scores, draws)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got is not None and got["ci_low"] < got["mean"] < got["ci_high"]
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MiB"

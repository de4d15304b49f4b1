"""Fusion of dense and sparse lists: pure functions."""

from __future__ import annotations

import pytest

from retriever.fusion import rrf, weighted


def test_rrf_rewards_agreement_and_respects_weights() -> None:
    dense = [(1, 0.9), (2, 0.8), (3, 0.1)]
    sparse = [(2, 12.0), (4, 3.0)]
    assert [c for c, _ in rrf([(0.5, dense), (0.5, sparse)])][0] == 2
    assert [c for c, _ in rrf([(1.0, dense), (0.0, sparse)])][:3] == [1, 2, 3]


def test_weighted_normalises_each_list() -> None:
    fused = dict(weighted([(0.5, [(1, 0.9), (2, 0.5)]), (0.5, [(2, 30.0), (3, 10.0)])]))
    assert fused[2] == pytest.approx(0.5)  # bottom of dense (0), top of sparse (1)
    assert fused[1] == pytest.approx(0.5) and fused[3] == pytest.approx(0.0)


def test_weighted_single_item_list_counts_as_best() -> None:
    fused = dict(weighted([(0.5, [(7, 0.3)]), (0.5, [(7, 4.0)])]))
    assert fused[7] == pytest.approx(1.0)
    assert weighted([(0.5, []), (0.5, [])]) == []

"""The reranker interface, exercised with a tiny cross-encoder built in the test."""

from __future__ import annotations

from pathlib import Path

import pytest

from retriever.index import DocumentIn, Hit, Retriever
from retriever.rerank import CrossEncoderReranker
from tests.fakes import FakeEmbedder
from tests.helpers import build_tiny_bert

WORDS = ["apt", "install", "package", "kernel", "boot", "network", "debian", "the", "a", "how"]


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-ce")
    return build_tiny_bert(folder, WORDS, head="classifier", max_position_embeddings=64)


class Reverse:
    """A reranker that reverses the order: proves the retriever hands over and obeys."""

    def rerank(self, query: str, hits: list[Hit], top_k: int) -> list[Hit]:
        return list(reversed(hits))[:top_k]


def test_retriever_applies_a_reranker(tmp_path: Path) -> None:
    r = Retriever(tmp_path, FakeEmbedder())
    for i in range(5):
        r.upsert(DocumentIn(f"apt install step {i} " + "apt " * (5 - i), id=f"d{i}"))
    plain = [h.doc_id for h in r.search("apt", k=5, mode="sparse")]
    reranked = [h.doc_id for h in r.search("apt", k=5, mode="sparse", reranker=Reverse())]
    assert reranked == list(reversed(plain))
    assert len(r.search("apt", k=2, mode="sparse", reranker=Reverse())) == 2


def test_cross_encoder_scores_and_reorders(tiny_cross_encoder: Path, tmp_path: Path) -> None:
    reranker = CrossEncoderReranker(str(tiny_cross_encoder))
    hits = [
        Hit(f"d{i}", i, 0, 10, 0.0, text, {})
        for i, text in enumerate(["how to install a package", "boot the kernel", "network debian"])
    ]
    out = reranker.rerank("how install package", hits, top_k=3)
    assert sorted(h.doc_id for h in out) == ["d0", "d1", "d2"]
    scores = [h.score for h in out]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 3
    assert reranker.rerank("x", [], top_k=3) == []

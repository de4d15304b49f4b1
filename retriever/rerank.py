"""Optional reranking of retrieved passages behind a small interface; cross-encoders implement it.

A reranker scores (query, passage) pairs jointly and reorders the fused candidates. No
cross-encoder ships offline with ragtune, so the default is none; any sentence-transformers
cross-encoder folder or hub id can be configured. Knows nothing of indexes or documents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Protocol

from retriever.index import Hit


class Reranker(Protocol):
    def rerank(self, query: str, hits: Sequence[Hit], top_k: int) -> list[Hit]: ...


class CrossEncoderReranker:
    """Rerank with a sentence-transformers ``CrossEncoder`` (no remote code, float32)."""

    def __init__(
        self, model: str, device: str = "cpu", max_length: int = 512, batch_size: int = 32
    ) -> None:
        from sentence_transformers import CrossEncoder

        self.name = model
        self.batch_size = batch_size
        self.model: Any = CrossEncoder(
            model, device=device, max_length=max_length, trust_remote_code=False
        )

    def rerank(self, query: str, hits: Sequence[Hit], top_k: int) -> list[Hit]:
        if not hits:
            return []
        scores = self.model.predict(
            [(query, h.text) for h in hits], batch_size=self.batch_size, show_progress_bar=False
        )  # (len(hits),)
        order = sorted(range(len(hits)), key=lambda i: -float(scores[i]))
        return [replace(hits[i], score=float(scores[i])) for i in order[:top_k]]

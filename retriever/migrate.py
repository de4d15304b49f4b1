"""Copy an index into another backend: the embedded one into PostgreSQL, or back.

``copy_index`` pages over the source's documents and writes them into the target through the
target's own ``upsert_many`` (so chunking, validation and transactions are the target's), with an
embedder that hands back the source's stored vectors for every chunk text it already embedded
and embeds only the rest (chunks of an index written before chunks carried their context). Ids,
texts, metadata and versions' content are kept; chunk ids are the target's own. A copy that is
stopped can be run again: documents already there unchanged are skipped. Knows nothing of
settings or the CLI.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from retriever.index import DocumentIn, EmbedderLike, Retriever, text_hash


class CarriedEmbedder:
    """The source's embedder, answering from the source's stored vectors where it can."""

    def __init__(self, source: Retriever) -> None:
        self.source = source
        self.embedded = 0  # texts that had no stored vector and were embedded

    @property
    def dim(self) -> int:
        return self.source.embedder.dim

    @property
    def identity(self) -> dict[str, Any]:
        return self.source.embedder.identity

    @property
    def languages(self) -> Any:
        return getattr(self.source.embedder, "languages", None)

    def encode(self, texts: list[str]) -> np.ndarray:
        hashes = [text_hash(t) for t in texts]
        known = self.source.store.vectors_by_hash(self.source.space, hashes)
        todo = [i for i, h in enumerate(hashes) if h not in known]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)  # (n, dim)
        if todo:
            out[todo] = self.source.embedder.encode([texts[i] for i in todo])
            self.embedded += len(todo)
        for i, h in enumerate(hashes):
            if h in known:
                out[i] = known[h]
        return out


def copy_index(
    source: Retriever,
    open_target: Callable[[EmbedderLike], Retriever],
    batch: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Copy every document of ``source`` into the index ``open_target(embedder)`` opens (with
    the source's embedder identity); what was copied. The target is closed at the end."""
    carried = CarriedEmbedder(source)
    target = open_target(carried)
    try:
        total, done, status = len(source), 0, {"added": 0, "updated": 0, "unchanged": 0}
        while True:
            page = source.documents(done, batch)
            if not page:
                break
            docs = [DocumentIn(row.text, id=row.id, metadata=row.metadata) for row in page]
            for result in target.upsert_many(docs):
                status[result.status] += 1
            done += len(page)
            if progress:
                progress(done, total)
        return {
            "documents": done,
            **status,
            "chunks": target.chunk_count,
            "embedded": carried.embedded,
            "target_documents": len(target),
        }
    finally:
        target.close()

"""A vector-backend module as a user writes one: importing it registers ``memory-lc``, LangChain's
InMemoryVectorStore (one per dimension, for this process), for ``retrieval.vector_index``."""

from __future__ import annotations

from langchain_core.vectorstores import InMemoryVectorStore

from retriever.lcvectors import register_vectorstore
from retriever.vectors import BACKENDS

STORES: dict[int, InMemoryVectorStore] = {}


def _open(embeddings, dim: int) -> InMemoryVectorStore:  # noqa: ANN001 - a PassThrough
    return STORES.setdefault(dim, InMemoryVectorStore(embeddings))


if "memory-lc" not in BACKENDS:
    register_vectorstore("memory-lc", _open, lambda store: list(store.store))

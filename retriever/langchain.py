"""LangChain adapters over the live retriever: a ``VectorStore``, a ``BaseRetriever`` and
``Embeddings`` in both directions.

``RagtuneVectorStore`` turns LangChain calls into ``Retriever.upsert_many``, ``delete``, ``get``
and ``search``; every search returns chunks, so a ``Document`` here is one chunk: page_content is
the chunk text, ``id`` the document id (several chunks of one document share it) and metadata the
document's metadata exactly as stored. Asked with ``chunk_info=True``, a result also carries
ragtune's own fields under the one reserved key ``"ragtune"`` (``RAGTUNE_KEY``): ``chunk_id``,
``start``, ``end`` and ``score``. ``RagtuneRetriever`` is the same search as a ``Runnable``, with
``k``, ``mode``, ``filters`` and ``chunk_info`` set on it and overridable per call.

The async methods run the sync ones in LangChain's thread executor: the index is thread-safe
(searches share a read lock, writes take the write lock) and does its own I/O synchronously.

It knows nothing of chunking, fusion or storage beyond the public ``Retriever`` API, and it
cannot search by a raw vector or run MMR: the engine searches by query text (sparse and hybrid
need the words) and exposes no vector-search entry point.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
from langchain_core.callbacks.manager import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables.config import run_in_executor
from langchain_core.vectorstores import VectorStore
from pydantic import Field, field_validator

from retriever.config import SEARCH_MODES, RetrieverConfig
from retriever.errors import DocumentNotFound
from retriever.index import DocumentIn, EmbedderLike, Hit, Retriever

RAGTUNE_KEY = "ragtune"
"""The metadata key that holds ragtune's chunk fields in a ``chunk_info=True`` result."""

_NO_VECTOR_SEARCH = (
    "RagtuneVectorStore searches by query text only: sparse and hybrid modes need the words, "
    "and retriever.index.Retriever has no search-by-vector entry point; "
    "use similarity_search(query, mode='dense') instead"
)


# ---- embeddings, both directions --------------------------------------------------------------
class RagtuneEmbeddings(Embeddings):
    """A ragtune embedder seen as LangChain ``Embeddings`` (unit-normalised vectors)."""

    def __init__(self, embedder: EmbedderLike) -> None:
        self.embedder = embedder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        vectors: list[list[float]] = self.embedder.encode(list(texts)).tolist()
        return vectors

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


class LangChainEmbedder:
    """Any LangChain ``Embeddings`` seen as a ragtune embedder: rows are unit-normalised, since the
    engine scores by inner product. ``identity`` names the class, its ``model``/``model_name``
    attribute when it has one, and the dimension (found by embedding one probe text)."""

    def __init__(self, embeddings: Embeddings) -> None:
        self.embeddings = embeddings
        self._dim = len(embeddings.embed_query("dimension probe"))

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def identity(self) -> dict[str, Any]:
        cls = type(self.embeddings)
        model = getattr(self.embeddings, "model", None) or getattr(
            self.embeddings, "model_name", None
        )
        return {
            "langchain_embeddings": f"{cls.__module__}.{cls.__qualname__}",
            "model": model if isinstance(model, str) else None,
            "dim": self._dim,
        }

    def encode(self, texts: list[str]) -> np.ndarray:
        rows = np.asarray(self.embeddings.embed_documents(list(texts)), dtype=np.float32)
        rows = rows.reshape(len(texts), self._dim)  # (n, dim)
        norms = np.linalg.norm(rows, axis=1, keepdims=True)  # (n, 1)
        return rows / np.maximum(norms, 1e-12)


def _as_embedder(embedding: Embeddings) -> EmbedderLike:
    if isinstance(embedding, RagtuneEmbeddings):
        return embedding.embedder
    return LangChainEmbedder(embedding)


# ---- hits as documents ------------------------------------------------------------------------
def hit_to_document(hit: Hit, *, chunk_info: bool = False) -> Document:
    """One chunk as a Document whose metadata is a copy of the document's metadata. With
    ``chunk_info``, ragtune's fields go under ``RAGTUNE_KEY``; a stored key of that name is
    shadowed in this result (never in the index)."""
    metadata = dict(hit.metadata)
    if chunk_info:
        metadata[RAGTUNE_KEY] = {
            "chunk_id": hit.chunk_id,
            "start": hit.start,
            "end": hit.end,
            "score": hit.score,
        }
    return Document(page_content=hit.text, id=hit.doc_id, metadata=metadata)


def _check_mode(mode: str) -> str:
    if mode not in SEARCH_MODES:
        raise ValueError(f"mode must be one of {SEARCH_MODES}, got {mode!r}")
    return mode


def _clip(score: float) -> float:
    return min(1.0, max(0.0, score))


def relevance_fn(mode: str, config: RetrieverConfig) -> Callable[[float], float]:
    """Map a raw score of ``mode`` to [0, 1], higher is more relevant.

    dense: cosine similarity clipped at 0. hybrid/rrf: the fused score over its maximum
    ``1 / (rrf_k + 1)`` (1 = first in both lists). hybrid/weighted: already in [0, 1]. sparse: BM25
    squashed as ``s / (1 + s)``, monotone but not calibrated.
    """
    _check_mode(mode)
    if mode == "sparse":
        return lambda s: max(0.0, s) / (1.0 + max(0.0, s))
    if mode == "hybrid" and config.fusion == "rrf":
        top = 1.0 / (config.rrf_k + 1)
        return lambda s: _clip(s / top)
    return _clip


# ---- vector store -----------------------------------------------------------------------------
class RagtuneVectorStore(VectorStore):
    """A ragtune ``Retriever`` behind LangChain's ``VectorStore`` interface.

    Writes are upserts (an existing id is replaced). ``delete`` is idempotent: unknown ids are
    skipped, as LangChain's standard vector-store tests require. Scores from
    ``similarity_search_with_score`` are the engine's, higher is better (not distances).
    ``chunk_info=True`` adds ragtune's chunk fields under ``RAGTUNE_KEY`` to every search result;
    searches take ``mode=`` and ``chunk_info=`` per call too.
    """

    def __init__(
        self, retriever: Retriever, *, mode: str = "hybrid", chunk_info: bool = False
    ) -> None:
        self._retriever = retriever
        self.mode = _check_mode(mode)
        self.chunk_info = chunk_info

    @property
    def retriever(self) -> Retriever:
        return self._retriever

    @property
    def embeddings(self) -> Embeddings:
        embedder = self._retriever.embedder
        if isinstance(embedder, LangChainEmbedder):
            return embedder.embeddings
        return RagtuneEmbeddings(embedder)

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        folder: Path | str | None = None,
        config: RetrieverConfig | None = None,
        mode: str = "hybrid",
        chunk_info: bool = False,
        **kwargs: Any,
    ) -> Self:
        """Open (or create) the index in ``folder`` with ``embedding`` (any LangChain
        ``Embeddings``) and add ``texts``."""
        if folder is None:
            raise TypeError("from_texts needs folder=: the directory that holds the index")
        _reject_kwargs("from_texts", kwargs)
        _check_mode(mode)  # before the index is opened
        retriever = Retriever(Path(folder), _as_embedder(embedding), config)
        store = cls(retriever, mode=mode, chunk_info=chunk_info)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    # ---- writes -------------------------------------------------------------------------------
    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Upsert texts; a ``None`` id gets a generated one. Other kwargs (``batch_size`` from
        LangChain's indexing API) are accepted and ignored: the engine batches itself."""
        docs = _documents_in(list(texts), metadatas, ids)
        return [result.id for result in self._retriever.upsert_many(docs)]

    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """``add_texts`` in the thread executor (``aadd_documents`` comes through here)."""
        return await run_in_executor(None, self.add_texts, list(texts), metadatas, ids=ids)

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        """Delete documents by id; ids not in the index are skipped. Returns True once none of
        ``ids`` is in the index. ``ids=None`` ("delete all" in LangChain) raises ValueError: a
        live index is not wiped by a default argument."""
        if ids is None:
            raise ValueError("delete needs a list of ids; ids=None (delete all) is not supported")
        pending = [doc_id for doc_id in dict.fromkeys(ids) if self._exists(doc_id)]
        while pending:
            try:
                self._retriever.delete(pending)
                break
            except DocumentNotFound as exc:  # deleted by another writer since the check
                if exc.doc_id not in pending:
                    raise
                pending.remove(exc.doc_id)
        return True

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        """``delete`` in the thread executor."""
        return await run_in_executor(None, self.delete, ids, **kwargs)

    def _exists(self, doc_id: str) -> bool:
        try:
            self._retriever.get(doc_id)
        except DocumentNotFound:
            return False
        return True

    # ---- reads --------------------------------------------------------------------------------
    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """Whole documents (not chunks) for the ids that exist, each once; never raises for
        unknown ids."""
        docs = []
        for doc_id in dict.fromkeys(ids):
            try:
                row = self._retriever.get(doc_id)
            except DocumentNotFound:
                continue
            docs.append(Document(page_content=row.text, id=row.id, metadata=dict(row.metadata)))
        return docs

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """``get_by_ids`` in the thread executor."""
        return await run_in_executor(None, self.get_by_ids, ids)

    def similarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        """The ``k`` best chunks; ``mode=`` and ``chunk_info=`` override the store's for this
        call."""
        pairs = self.similarity_search_with_score(query, k, filter, **kwargs)
        return [doc for doc, _ in pairs]

    async def asimilarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        """``similarity_search`` in the thread executor."""
        return await run_in_executor(None, self.similarity_search, query, k, filter, **kwargs)

    def similarity_search_with_score(
        self,
        query: str,
        k: int = 4,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """Chunks with the engine's raw score (higher is better); ``filter`` matches metadata
        by equality or list membership, as ``Retriever.search`` does."""
        chunk_info = bool(kwargs.pop("chunk_info", self.chunk_info))
        mode = self._mode(kwargs)
        if filter is not None and not isinstance(filter, dict):
            raise TypeError(f"filter must be a dict of metadata values, got {type(filter)}")
        hits = self._retriever.search(query, k=k, mode=mode, filters=filter)
        return [(hit_to_document(hit, chunk_info=chunk_info), hit.score) for hit in hits]

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """``similarity_search_with_score`` in the thread executor."""
        return await run_in_executor(
            None, self.similarity_search_with_score, query, k, filter, **kwargs
        )

    def _mode(self, kwargs: dict[str, Any]) -> str:
        mode = kwargs.pop("mode", None) or self.mode
        _reject_kwargs("search", kwargs)
        return _check_mode(mode)

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return relevance_fn(self.mode, self._retriever.config)

    def _similarity_search_with_relevance_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Relevance in [0, 1] mapped for the mode actually searched (per-call ``mode=``)."""
        to_relevance = relevance_fn(kwargs.get("mode") or self.mode, self._retriever.config)
        pairs = self.similarity_search_with_score(query, k, **kwargs)
        return [(doc, to_relevance(score)) for doc, score in pairs]

    async def _asimilarity_search_with_relevance_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return await run_in_executor(
            None, self._similarity_search_with_relevance_scores, query, k, **kwargs
        )

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, **kwargs: Any
    ) -> list[Document]:
        raise NotImplementedError(_NO_VECTOR_SEARCH)

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        **kwargs: Any,
    ) -> list[Document]:
        raise NotImplementedError(
            "RagtuneVectorStore does not implement MMR (the engine returns no chunk vectors); "
            "use search_type='similarity' or 'similarity_score_threshold'"
        )


def _documents_in(
    texts: list[str],
    metadatas: list[dict[str, Any]] | None,
    ids: Sequence[str | None] | None,
) -> list[DocumentIn]:
    if metadatas is not None and len(metadatas) != len(texts):
        raise ValueError(f"got {len(metadatas)} metadatas for {len(texts)} texts")
    if ids is not None and len(ids) != len(texts):
        raise ValueError(f"got {len(ids)} ids for {len(texts)} texts")
    metas = metadatas if metadatas is not None else [{} for _ in texts]
    keys = ids if ids is not None else [None for _ in texts]
    return [
        DocumentIn(text, id=key or None, metadata=dict(meta or {}))
        for text, meta, key in zip(texts, metas, keys, strict=True)
    ]


def _reject_kwargs(where: str, kwargs: dict[str, Any]) -> None:
    if kwargs:
        raise TypeError(f"{where} got unexpected keyword arguments: {sorted(kwargs)}")


# ---- retriever --------------------------------------------------------------------------------
class RagtuneRetriever(BaseRetriever):
    """``Retriever.search`` as a LangChain retriever. ``k``, ``mode``, ``filters`` and
    ``chunk_info`` set here are the defaults; ``invoke(query, k=1, mode=..., filters=...,
    chunk_info=...)`` overrides them for one call. Other keyword arguments are a TypeError."""

    retriever: Retriever
    k: int = Field(default=4, ge=1, description="chunks returned per query")
    mode: str = Field(default="hybrid", description="dense | sparse | hybrid")
    filters: dict[str, Any] | None = Field(
        default=None, description="metadata equality / list-membership filter"
    )
    chunk_info: bool = Field(
        default=False, description=f"add chunk id, span and score under {RAGTUNE_KEY!r}"
    )

    @field_validator("mode")
    @classmethod
    def _valid_mode(cls, mode: str) -> str:
        return _check_mode(mode)

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        mode: str | None = None,
        filters: dict[str, Any] | None = None,
        chunk_info: bool | None = None,
    ) -> list[Document]:
        hits = self.retriever.search(
            query,
            k=self.k if k is None else _check_k(k),
            mode=self.mode if mode is None else _check_mode(mode),
            filters=self.filters if filters is None else filters,
        )
        info = self.chunk_info if chunk_info is None else chunk_info
        return [hit_to_document(hit, chunk_info=info) for hit in hits]

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
        mode: str | None = None,
        filters: dict[str, Any] | None = None,
        chunk_info: bool | None = None,
    ) -> list[Document]:
        """The sync search in the thread executor."""
        return await run_in_executor(
            None,
            self._get_relevant_documents,
            query,
            run_manager=run_manager.get_sync(),
            k=k,
            mode=mode,
            filters=filters,
            chunk_info=chunk_info,
        )


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return k

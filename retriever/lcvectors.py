"""Any LangChain ``VectorStore`` as a vector backend of the embedded index, registered by name.

``register_vectorstore("qdrant", factory, list_ids=...)`` makes ``RetrieverConfig(vector_index=
"qdrant")`` keep the index's dense vectors in the store that ``factory(embeddings, dim)`` opens;
SQLite still holds the documents, chunks and every vector, and BM25 stays in memory. The store
holds this index alone and persists itself, so a snapshot writes only a small marker (backend,
dimension, count); at open the change log since that marker is replayed into the store and its
ids are checked against SQLite's live chunks, and a store that disagrees is cleared and refilled
from SQLite (``retriever.snapshot``).

A chunk id is kept in the store as the UUID whose integer value it is (chunk 7 is
``00000000-0000-0000-0000-000000000007``, a string id every store takes, UUID-only ones such as
Qdrant and Weaviate too) and as ``metadata["chunk_id"]``; the page content is the id as text,
which is how ``PassThrough`` hands each store the vector ragtune already made. Knows nothing of
documents, SQLite or any particular store.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from retriever.vectors import _atomic_write, register_backend

# A store's raw score -> the inner product of unit vectors (cosine), higher is better, the scale
# of the flat index. Which one a store returns is its own documentation's to say; examples:
SCORES: dict[str, Callable[[float], float]] = {
    # cosine similarity or inner product: InMemoryVectorStore, Qdrant's COSINE and DOT
    "similarity": lambda s: s,
    # 1 - cosine: langchain-postgres' PGVector (its default, cosine)
    "cosine_distance": lambda d: 1.0 - d,
    # |a - b|, and on unit vectors |a - b|^2 = 2 - 2 a.b: Qdrant's EUCLID
    "euclidean": lambda d: 1.0 - d * d / 2.0,
    # |a - b|^2: langchain-community's FAISS store (IndexFlatL2)
    "squared_euclidean": lambda d: 1.0 - d / 2.0,
}
Factory = Callable[[Embeddings, int], VectorStore]
_INT63 = 1 << 63


def chunk_key(cid: int) -> str:
    """The store id of chunk ``cid`` (an int64 >= 0): the UUID whose integer value it is."""
    return str(uuid.UUID(int=int(cid)))


def chunk_id(key: str) -> int:
    """The chunk id stored under ``key``; ``ValueError`` for an id ragtune did not write."""
    try:
        value = uuid.UUID(str(key)).int
    except ValueError:
        value = _INT63
    if value >= _INT63:
        raise ValueError(
            f"the vector store holds {key!r}, not a ragtune chunk id: the store (its collection) "
            "must hold this index alone"
        )
    return value


class PassThrough(Embeddings):
    """The ``Embeddings`` a registered store is opened with: it returns the vectors ragtune
    staged for each text (a chunk id), so the store embeds nothing itself. A text not staged (a
    store's dimension probe, such as Qdrant's ``embed_documents(["dummy_text"])``) gets zeros;
    ``embed_query`` is refused, since searches go by vector."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._staged: dict[str, list[float]] = {}

    @contextmanager
    def staged(self, texts: list[str], vectors: np.ndarray) -> Iterator[None]:
        self._staged = dict(zip(texts, vectors.astype(float).tolist(), strict=True))
        try:
            yield
        finally:
            self._staged = {}

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._staged.get(t, [0.0] * self.dim) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        raise NotImplementedError("ragtune searches a registered store by vector, never by text")


class LangChainVectors:
    """A ``VectorIndex`` over one LangChain ``VectorStore``: ``add`` is ``add_documents`` with
    ids, ``remove`` is ``delete(ids)``, ``search`` is ``similarity_search_with_score_by_vector``
    with the raw score turned into an inner product by ``score`` (see ``SCORES``). ``ids`` lists
    what the store really holds, through ``list_ids`` (LangChain has no call for that)."""

    def __init__(
        self,
        backend: StoreBackend,
        dim: int,
        store: VectorStore,
        embeddings: PassThrough,
    ) -> None:
        self.kind, self.dim, self.store = backend.name, dim, store
        self._backend, self._embeddings = backend, embeddings
        # not on VectorStore itself, but on InMemoryVectorStore, Qdrant's, PGVector's...
        search = getattr(store, "similarity_search_with_score_by_vector", None)
        if search is None:
            raise TypeError(
                f"{type(store).__name__} has no similarity_search_with_score_by_vector: "
                "ragtune searches a vector store by vector, with scores"
            )
        self._search: Callable[..., list[tuple[Document, float]]] = search

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if not len(ids):
            return
        cids = [int(i) for i in ids]
        texts = [str(c) for c in cids]
        docs = [
            Document(page_content=t, metadata={"chunk_id": c}, id=chunk_key(c))
            for c, t in zip(cids, texts, strict=True)
        ]
        with self._embeddings.staged(texts, np.asarray(vectors, dtype=np.float32)):
            self.store.add_documents(docs, ids=[chunk_key(c) for c in cids])

    def remove(self, ids: np.ndarray) -> None:
        if len(ids):
            self.store.delete(ids=[chunk_key(int(i)) for i in ids])

    def clear(self) -> None:
        """Delete everything the store holds (refused, deleting nothing, if it holds any id
        ragtune did not write)."""
        self.remove(self.ids())

    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        embedding = np.asarray(query, dtype=np.float32).reshape(-1).tolist()  # (dim,)
        found = self._search(embedding, k=k)
        hits = [(int(d.metadata["chunk_id"]), self._backend.score(float(s))) for d, s in found]
        return sorted(hits, key=lambda h: -h[1])[:k]

    def ids(self) -> np.ndarray:
        keys = self._backend.list_ids(self.store)
        return np.array(sorted(chunk_id(key) for key in keys), dtype=np.int64)

    def __len__(self) -> int:
        if self._backend.count is not None:
            return self._backend.count(self.store)
        return len(self.ids())

    def save(self, path: Path) -> None:
        """The store persists itself: write only the marker a later ``load`` checks."""
        marker = {"backend": self.kind, "dim": self.dim, "count": len(self)}
        _atomic_write(path, json.dumps(marker).encode())


@dataclass(frozen=True)
class StoreBackend:
    """What ``register_vectorstore`` puts in ``retriever.vectors.BACKENDS``: ``backend(dim)``
    is the store cleared (an empty index, which a rebuild from SQLite fills), ``load`` the
    store as it is, once the snapshot's marker matches."""

    name: str
    factory: Factory
    list_ids: Callable[[VectorStore], Iterable[str]]
    score: Callable[[float], float]
    count: Callable[[VectorStore], int] | None = None

    def open(self, dim: int) -> LangChainVectors:
        embeddings = PassThrough(dim)
        store = self.factory(embeddings, dim)
        held = store.embeddings or embeddings  # a store kept open since holds an older one
        if not isinstance(held, PassThrough) or held.dim != dim:
            raise TypeError(
                f"vector store {self.name!r}: the factory must open its store with the "
                f"PassThrough embeddings it is given (dimension {dim}), not {held!r}"
            )
        return LangChainVectors(self, dim, store, held)

    def __call__(self, dim: int) -> LangChainVectors:
        index = self.open(dim)
        index.clear()
        return index

    def load(self, path: Path, dim: int) -> LangChainVectors:
        marker = json.loads(path.read_text())
        if marker.get("backend") != self.name:
            raise ValueError(f"{path}: a snapshot of {marker.get('backend')!r}, not {self.name!r}")
        if marker.get("dim") != dim:
            raise ValueError(f"{path}: dimension {marker.get('dim')}, expected {dim}")
        return self.open(dim)


def register_vectorstore(
    name: str,
    factory: Factory,
    list_ids: Callable[[VectorStore], Iterable[str]],
    *,
    score: str | Callable[[float], float] = "similarity",
    count: Callable[[VectorStore], int] | None = None,
) -> StoreBackend:
    """Make ``vector_index=name`` keep dense vectors in the store ``factory(embeddings, dim)``
    opens (with ``embeddings``, a ``PassThrough``, as its embedding function; the same store
    each time for a dimension). ``list_ids(store)`` yields every id the store holds; ``score``
    names the store's raw score in ``SCORES`` (or converts it); ``count(store)``, if given,
    counts faster than listing. The store needs ``add_documents`` with ids, ``delete(ids)``
    and ``similarity_search_with_score_by_vector``."""
    if isinstance(score, str) and score not in SCORES:
        raise ValueError(f"score must be one of {sorted(SCORES)} or a function, got {score!r}")
    convert = SCORES[score] if isinstance(score, str) else score
    backend = StoreBackend(name, factory, list_ids, convert, count)
    register_backend(name, backend)  # checks the name
    return backend

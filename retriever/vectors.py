"""Vector index backends behind one small protocol, chosen by name from a registry.

Ids are stable int64 chunk ids from SQLite, never row positions. ``flat`` is exact inner product
on unit vectors (``IndexIDMap2(IndexFlatIP)``), deleting by tombstone and batched compaction;
``hnsw`` is approximate
(``IndexHNSWFlat``), cannot delete in place, so removed ids become tombstones filtered at search
time and the graph is rebuilt once tombstones pass a fraction of the index. ``save`` writes
atomically (temp file, fsync, rename). Other backends join ``BACKENDS`` by name through
``register_backend`` (``retriever.lcvectors``: any LangChain vector store). This module knows
nothing of documents or SQLite.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Protocol

from retriever import threads

threads.prefer_passive_wait()  # before faiss (and later torch) load OpenMP: see retriever.threads

import faiss  # noqa: E402
import numpy as np  # noqa: E402


class VectorIndex(Protocol):
    """What the retriever needs from a vector index."""

    dim: int
    kind: str  # its name in BACKENDS, recorded in the snapshot manifest

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...
    def remove(self, ids: np.ndarray) -> None: ...
    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]: ...
    def ids(self) -> np.ndarray: ...
    def __len__(self) -> int: ...
    def save(self, path: Path) -> None: ...


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(path: Path, dim: int) -> faiss.Index:
    index = faiss.deserialize_index(np.fromfile(path, dtype=np.uint8))
    if index.d != dim:
        raise ValueError(f"{path}: dimension {index.d}, expected {dim}")
    return index


class FlatIndex:
    """Exact search. A delete tombstones its ids (filtered at search time) and the id map is
    compacted in one ``remove_ids`` call once enough pile up, so a delete costs microseconds
    instead of a pass over the whole array."""

    kind = "flat"
    compact_at = 256

    def __init__(self, dim: int, index: faiss.Index | None = None) -> None:
        self.dim = dim
        self._index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._tombstones: set[int] = set()
        self._refresh()

    def _refresh(self) -> None:
        # position -> id, read by searches on the inner flat index (skips IDMap's parallel step)
        self._id_of = faiss.vector_to_array(self._index.id_map).astype(np.int64)  # type: ignore[attr-defined]
        self._inner = faiss.downcast_index(self._index.index)  # type: ignore[attr-defined]

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            ids = np.asarray(ids, dtype=np.int64)
            self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
            self._id_of = np.concatenate([self._id_of, ids])

    def remove(self, ids: np.ndarray) -> None:
        self._tombstones.update(int(i) for i in ids)
        if len(self._tombstones) >= self.compact_at:
            self.compact()

    def compact(self) -> None:
        """Drop tombstoned vectors from the index for good."""
        if self._tombstones:
            dead = np.fromiter(self._tombstones, dtype=np.int64)
            self._index.remove_ids(faiss.IDSelectorBatch(len(dead), faiss.swig_ptr(dead)))
            self._tombstones = set()
            self._refresh()

    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        total = self._index.ntotal
        if total == 0:
            return []
        q = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)  # (1, dim)
        scores, pos = self._inner.search(q, min(k + len(self._tombstones), total))  # (1, depth)
        hits = []
        for p, s in zip(pos[0], scores[0], strict=True):
            if p < 0:
                continue
            cid = int(self._id_of[p])
            if cid not in self._tombstones:
                hits.append((cid, float(s)))
                if len(hits) == k:
                    break
        return hits

    def ids(self) -> np.ndarray:
        if not self._tombstones:
            return self._id_of.copy()
        return np.array([i for i in self._id_of if int(i) not in self._tombstones], dtype=np.int64)

    def __len__(self) -> int:
        return int(self._index.ntotal) - len(self._tombstones)

    def save(self, path: Path) -> None:
        self.compact()  # a snapshot never carries tombstones
        _atomic_write(path, faiss.serialize_index(self._index).tobytes())

    @classmethod
    def load(cls, path: Path, dim: int) -> FlatIndex:
        return cls(dim, _read(path, dim))


class HNSWIndex:
    """Approximate search; removed ids are tombstoned and the graph rebuilt when they pile up."""

    kind = "hnsw"
    rebuild_fraction = 0.2

    def __init__(
        self,
        dim: int,
        index: faiss.Index | None = None,
        m: int = 32,
    ) -> None:
        self.dim = dim
        self.m = m
        self._index = index if index is not None else self._empty()
        self._tombstones: set[int] = set()

    def _empty(self) -> faiss.Index:
        hnsw = faiss.IndexHNSWFlat(self.dim, self.m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efSearch = 64
        return faiss.IndexIDMap2(hnsw)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self._tombstones -= {int(i) for i in ids}
            self._index.add_with_ids(
                np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64)
            )

    def remove(self, ids: np.ndarray) -> None:
        self._tombstones |= {int(i) for i in ids}
        if len(self._tombstones) > self.rebuild_fraction * max(1, self._index.ntotal):
            self._rebuild()

    def _rebuild(self) -> None:
        live = self.ids()
        vectors = np.vstack([self._index.reconstruct(int(i)) for i in live]) if len(live) else None
        self._index = self._empty()
        self._tombstones = set()
        if vectors is not None:
            self._index.add_with_ids(vectors, live)

    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        if self._index.ntotal == 0:
            return []
        q = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)  # (1, dim)
        depth = min(k + len(self._tombstones), self._index.ntotal)
        scores, ids = self._index.search(q, depth)
        hits = [
            (int(i), float(s))
            for i, s in zip(ids[0], scores[0], strict=True)
            if i >= 0 and int(i) not in self._tombstones
        ]
        return hits[:k]

    def ids(self) -> np.ndarray:
        """Live ids: the graph's id map without tombstones (as ``FlatIndex.ids``)."""
        held = faiss.vector_to_array(self._index.id_map).astype(np.int64)  # type: ignore[attr-defined]
        return np.array([i for i in held if int(i) not in self._tombstones], dtype=np.int64)

    def __len__(self) -> int:
        return int(self._index.ntotal) - len(self._tombstones)

    def save(self, path: Path) -> None:
        if self._tombstones:
            self._rebuild()  # a snapshot never carries tombstones
        _atomic_write(path, faiss.serialize_index(self._index).tobytes())

    @classmethod
    def load(cls, path: Path, dim: int) -> HNSWIndex:
        return cls(dim, _read(path, dim))


class Backend(Protocol):
    """An entry of ``BACKENDS``: ``backend(dim)`` makes an empty index, ``backend.load(path,
    dim)`` opens one saved at ``path`` (``ValueError`` for another dimension)."""

    def __call__(self, dim: int) -> VectorIndex: ...
    def load(self, path: Path, dim: int) -> VectorIndex: ...


BACKENDS: dict[str, Backend] = {"flat": FlatIndex, "hnsw": HNSWIndex}
BUILTIN = ("flat", "hnsw")


def register_backend(name: str, backend: Backend) -> None:
    """Make ``name`` a vector backend (registering it again replaces it); the built-in names
    are refused. ``name`` appears in snapshot file names: lower-case letters, digits, _ and -."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,39}", name):
        raise ValueError(f"a vector backend name is [a-z0-9_-], up to 40, got {name!r}")
    if name in BUILTIN:
        raise ValueError(f"vector backend {name!r} is built in and cannot be replaced")
    BACKENDS[name] = backend


# Any: a FlatIndex, an HNSWIndex or a registered backend's index, each a VectorIndex
def make_index(kind: str, dim: int) -> Any:
    if kind not in BACKENDS:
        raise ValueError(f"vector index must be one of {sorted(BACKENDS)}, got {kind!r}")
    return BACKENDS[kind](dim)


def load_index(kind: str, path: Path, dim: int) -> Any:
    return BACKENDS[kind].load(path, dim)

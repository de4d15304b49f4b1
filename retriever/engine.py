"""The live retriever: add, replace and delete documents while searches run.

SQLite (``store.py``) is the truth; FAISS (``IndexIDMap2`` over inner product on unit vectors,
ids = SQLite chunk ids) and BM25 are views rebuilt from it on open. A write embeds outside the
lock, then under the write lock commits to SQLite and applies the change to FAISS, so a search
(under the read lock) sees a document's old chunks or its new ones, never a mix, and a write is
visible to the next search once it returns. Knows nothing of HTTP or generation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from retriever.chunking import split
from retriever.config import MODES, RetrieverConfig
from retriever.errors import DocumentNotFound, EmbedderMismatch, InvalidDocument
from retriever.sparse import SparseIndex
from retriever.store import DocumentRow, NewChunk, Store, now

log = logging.getLogger(__name__)


class EmbedderLike(Protocol):
    @property
    def dim(self) -> int: ...
    @property
    def identity(self) -> dict[str, Any]: ...
    def encode(self, texts: list[str]) -> np.ndarray: ...


@dataclass
class DocumentIn:
    text: str
    id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WriteResult:
    id: str
    version: int
    status: str  # added | updated | unchanged
    chunks: int


@dataclass(frozen=True)
class Hit:
    doc_id: str
    chunk_id: int
    start: int
    end: int
    score: float
    text: str
    metadata: dict[str, Any]


class RWLock:
    """Many readers or one writer; a waiting writer blocks new readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer and not self._waiting)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            self._cond.wait_for(lambda: not self._writer and self._readers == 0)
            self._waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _doc_hash(text: str, metadata: dict[str, Any]) -> str:
    return _hash(text + "\x00" + json.dumps(metadata, sort_keys=True, ensure_ascii=False))


class Retriever:
    """Documents in SQLite, dense search in FAISS, sparse in BM25, fused per query."""

    def __init__(
        self, folder: Path, embedder: EmbedderLike, config: RetrieverConfig | None = None
    ) -> None:
        import faiss

        self.config = config or RetrieverConfig()
        self.embedder = embedder
        self.store = Store(folder / "ragtune.sqlite")
        self._lock = RWLock()
        self._write_lock = threading.Lock()  # one writer embeds at a time, in order
        self._check_identity()
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(embedder.dim))
        self._sparse: SparseIndex | None = None
        self._sparse_lock = threading.Lock()
        ids, vecs = [], []
        for cid, _, vec in self.store.all_chunks():
            ids.append(cid)
            vecs.append(vec)
        if ids:
            self._index.add_with_ids(np.vstack(vecs), np.asarray(ids, dtype=np.int64))
        log.info("retriever open: %d documents, %d chunks", self.store.count_documents(), len(ids))

    def _check_identity(self) -> None:
        mine = json.dumps(self.embedder.identity, sort_keys=True)
        stored = self.store.get_meta("embedder")
        if stored is None:
            self.store.set_meta("embedder", mine)
        elif stored != mine:
            raise EmbedderMismatch(
                f"the index at {self.store.path} was built with embedder {stored}, not {mine}; "
                "open it with that embedder or run 'ragtune reindex' to re-embed"
            )

    def close(self) -> None:
        self.store.close()

    def __len__(self) -> int:
        return self.store.count_documents()

    @property
    def chunk_count(self) -> int:
        return int(self._index.ntotal)

    # ---- writes -------------------------------------------------------------------------
    def upsert(self, doc: DocumentIn) -> WriteResult:
        """Add or replace one document; unchanged content is a no-op, unchanged chunks keep
        their vectors (no re-embedding)."""
        return self.upsert_many([doc])[0]

    def upsert_many(self, docs: Sequence[DocumentIn]) -> list[WriteResult]:
        results = []
        with self._write_lock:
            for doc in docs:
                results.append(self._upsert(doc))
        return results

    def _upsert(self, doc: DocumentIn) -> WriteResult:
        doc_id = _validate(doc)
        old = self.store.document(doc_id)
        digest = _doc_hash(doc.text, doc.metadata)
        if old is not None and old.hash == digest:
            return WriteResult(doc_id, old.version, "unchanged", 0)
        pieces = split(doc.text, self.config.chunk_size, self.config.chunk_overlap)
        hashes = [_hash(p.text) for p in pieces]
        known = self.store.vectors_by_hash(hashes)
        todo = [i for i, h in enumerate(hashes) if h not in known]
        fresh = self.embedder.encode([pieces[i].text for i in todo]) if todo else None
        vectors = {h: v for h, v in known.items()}
        for row, i in enumerate(todo):
            vectors[hashes[i]] = fresh[row]  # type: ignore[index]
        chunks = [
            NewChunk(p.ordinal, p.start, p.end, p.text, h, vectors[h])
            for p, h in zip(pieces, hashes, strict=True)
        ]
        t = now()
        record = DocumentRow(
            doc_id,
            (old.version + 1) if old else 1,
            doc.text,
            doc.metadata,
            digest,
            old.created if old else t,
            t,
        )
        with self._lock.write():
            removed, added = self.store.replace(record, chunks)
            self._apply(removed, added, [c.vector for c in chunks])
        return WriteResult(doc_id, record.version, "updated" if old else "added", len(chunks))

    def delete(self, doc_ids: Sequence[str]) -> None:
        """Delete documents; raises DocumentNotFound (deleting nothing) if any is unknown."""
        with self._write_lock:
            missing = [d for d in doc_ids if self.store.document(d) is None]
            if missing:
                raise DocumentNotFound(missing[0])
            with self._lock.write():
                removed = self.store.delete(doc_ids)
                self._apply(removed, [], [])

    def _apply(self, removed: list[int], added: list[int], vectors: list[np.ndarray]) -> None:
        if removed:
            self._index.remove_ids(np.asarray(removed, dtype=np.int64))  # type: ignore[arg-type]
        if added:
            self._index.add_with_ids(
                np.vstack(vectors).astype(np.float32), np.asarray(added, dtype=np.int64)
            )
        self._sparse = None  # rebuilt at the next sparse search

    # ---- reads --------------------------------------------------------------------------
    def get(self, doc_id: str) -> DocumentRow:
        row = self.store.document(doc_id)
        if row is None:
            raise DocumentNotFound(doc_id)
        return row

    def search(
        self, query: str, k: int = 5, mode: str = "hybrid", filters: dict[str, Any] | None = None
    ) -> list[Hit]:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        depth = max(self.config.candidates, k) * (4 if filters else 1)
        qvec = self.embedder.encode([query]) if mode != "sparse" else None
        with self._lock.read():
            dense = self._dense(qvec, depth) if qvec is not None else []
            sparse = self._sparse_search(query, depth) if mode != "dense" else []
            ranked = (
                dense
                if mode == "dense"
                else sparse
                if mode == "sparse"
                else self._fuse(dense, sparse)
            )
            rows = self.store.chunks([cid for cid, _ in ranked])
        hits = []
        for cid, score in ranked:
            row = rows.get(cid)
            if row is None or not _matches(row.metadata, filters):
                continue
            hits.append(Hit(row.doc_id, cid, row.start, row.end, score, row.text, row.metadata))
            if len(hits) == k:
                break
        return hits

    def _dense(self, qvec: np.ndarray, depth: int) -> list[tuple[int, float]]:
        if self._index.ntotal == 0:
            return []
        scores, ids = self._index.search(qvec.astype(np.float32), min(depth, self._index.ntotal))
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]

    def _sparse_search(self, query: str, depth: int) -> list[tuple[int, float]]:
        with self._sparse_lock:
            if self._sparse is None:
                ids, texts = [], []
                for cid, text, _ in self.store.all_chunks():
                    ids.append(cid)
                    texts.append(text)
                self._sparse = SparseIndex(ids, texts)
            sparse = self._sparse
        return sparse.search(query, depth)

    def _fuse(
        self, dense: list[tuple[int, float]], sparse: list[tuple[int, float]]
    ) -> list[tuple[int, float]]:
        w = self.config.dense_weight
        fused: dict[int, float] = {}
        if self.config.fusion == "rrf":
            for weight, ranked in ((w, dense), (1 - w, sparse)):
                for rank, (cid, _) in enumerate(ranked):
                    fused[cid] = fused.get(cid, 0.0) + weight / (self.config.rrf_k + rank + 1)
        else:
            for weight, ranked in ((w, dense), (1 - w, sparse)):
                if not ranked:
                    continue
                values = np.array([s for _, s in ranked])
                lo, span = values.min(), float(np.ptp(values)) or 1.0
                for cid, s in ranked:
                    fused[cid] = fused.get(cid, 0.0) + weight * (s - lo) / span
        return sorted(fused.items(), key=lambda kv: -kv[1])


def _validate(doc: DocumentIn) -> str:
    if not isinstance(doc.text, str) or not doc.text.strip():
        raise InvalidDocument("document text is empty")
    doc_id = doc.id or uuid.uuid4().hex
    if not (0 < len(doc_id) <= 256) or any(c in doc_id for c in "\x00/\\\n"):
        raise InvalidDocument(f"invalid document id {doc_id!r}: 1-256 chars, no / \\ or NUL")
    try:
        json.dumps(doc.metadata)
    except (TypeError, ValueError) as exc:
        raise InvalidDocument(f"metadata is not JSON: {exc}") from None
    return doc_id


def _matches(metadata: dict[str, Any], filters: dict[str, Any] | None) -> bool:
    if not filters:
        return True
    for key, want in filters.items():
        have = metadata.get(key)
        if isinstance(want, list):
            if have not in want and not (isinstance(have, list) and set(have) & set(want)):
                return False
        elif have != want and not (isinstance(have, list) and want in have):
            return False
    return True

"""The live retriever: add, replace and delete documents while searches run.

SQLite (``store.py``) is the truth; FAISS (``IndexIDMap2`` over inner product on unit vectors,
ids = SQLite chunk ids) and BM25 are views rebuilt from it on open. A write embeds outside the
lock, then under the write lock commits to SQLite and applies the change to FAISS, so a search
(under the read lock) sees a document's old chunks or its new ones, never a mix, and a write is
visible to the next search once it returns. Every write is checked against
``retriever.validation`` (a new id by ``check_id``, a stored one by ``check_any_id``; metadata)
and ``TEXT_MAX_CHARS`` (``InvalidDocument``), every search's filters against ``check_filters``
(``InvalidSearch``); reads serve any stored row.
Knows nothing of HTTP or generation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from retriever import fusion, snapshot
from retriever.chunking import (
    TEXT_VERSION,
    Chunk,
    Sections,
    document_title,
    embedding_text,
    is_markdown,
    split,
)
from retriever.config import SEARCH_MODES, RetrieverConfig
from retriever.errors import DocumentNotFound, EmbedderMismatch, InvalidDocument, InvalidSearch
from retriever.locks import FolderLock, RWLock
from retriever.pseudo import pseudo_queries
from retriever.sparse import CJK, LiveSparse
from retriever.store import ChunkContext, DocumentRow, NewChunk, Store, Written, now
from retriever.validation import TEXT_MAX_CHARS as TEXT_MAX_CHARS  # the write bound, named here too
from retriever.validation import (
    check_any_id,
    check_filters,
    check_id,
    check_metadata,
    check_text,
)

log = logging.getLogger(__name__)
DB_NAME = "ragtune.sqlite"
FITTED_KEY = "dense_weights"  # meta: hybrid dense shares fitted per language for one space
SHARE_GRID = tuple(i / 10 for i in range(11))  # dense shares tried by a fit, both sides alone too
FIT_MIN_CHUNKS = 200  # fewer chunks give too few pseudo-queries to fit on
FIT_MIN_QUERIES = 30  # a language with fewer pseudo-queries keeps its default share
TEXT_KEY = "embedding_text"  # meta: the TEXT_VERSION of the active space (absent: 1)
CONTEXT_KEY = "chunk_context"  # meta: set once every chunk's title and section are filled


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
    where: str | None = field(default=None, compare=False)  # its file (file:line), for errors
    # the id as its file gave it, before ``normal_id``: a write updates the row stored under it
    # when none is stored under ``id`` (a re-ingest of a file an older loader named)
    stored_as: str | None = field(default=None, compare=False)


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
    title: str = ""  # the document's title
    section: str = ""  # the heading path of the chunk's section ("Install > apt")


def text_hash(text: str) -> str:
    """The key a stored vector is found by: the hash of the text embedded."""
    return hashlib.sha256(text.encode()).hexdigest()


def _doc_hash(text: str, metadata: dict[str, Any]) -> str:
    return text_hash(text + "\x00" + json.dumps(metadata, sort_keys=True, ensure_ascii=False))


@dataclass
class _Plan:
    """A document write being prepared: its row, its chunks and, once embedded, vectors."""

    record: DocumentRow
    pieces: list[Chunk]
    title: str
    result: WriteResult
    chunks: list[NewChunk] = field(default_factory=list)


def space_of(identity: dict[str, Any], text_version: int = TEXT_VERSION) -> str:
    """The vector-space key of an embedder and of what it embeds (``TEXT_VERSION``): a short
    hash of both (of the identity alone for version 1, the spaces indexes were built in before
    chunks carried their context)."""
    key: Any = identity if text_version == 1 else {"embedder": identity, "text": text_version}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def text_for(chunk: ChunkContext | NewChunk, text_version: int) -> str:
    """What a chunk is embedded as in a space of ``text_version``."""
    if text_version == 1:
        return chunk.text
    return embedding_text(chunk.title, chunk.section, chunk.text)


def stored_identity(folder: Path, which: str = "embedder") -> dict[str, Any] | None:
    """The identity of the embedder an index at ``folder`` was built with (``which``
    "previous_embedder": the one a rollback returns to), or None if new."""
    path = folder / DB_NAME
    if not path.exists():
        return None
    store = Store(path)
    try:
        raw = store.get_meta(which)
    finally:
        store.close()
    return json.loads(raw) if raw else None


class Retriever:
    """Documents in SQLite, dense search in FAISS, sparse in BM25, fused per query.

    One process owns an index folder at a time (a file lock says so); within it, searches run
    concurrently and writes are serialised.
    """

    def __init__(
        self, folder: Path, embedder: EmbedderLike, config: RetrieverConfig | None = None
    ) -> None:
        self.config = config or RetrieverConfig()
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._folder_lock = FolderLock(folder)
        self._folder_lock.acquire()
        try:
            self.store: Any = Store(folder / DB_NAME, self.config.durability)
        except BaseException:
            self._folder_lock.release()
            raise
        self._open(embedder, LiveSparse(self._sparse_texts))

    @property
    def location(self) -> str:
        """Where the index lives, for messages: its folder."""
        return str(self.folder)

    def _open(self, embedder: EmbedderLike, sparse: Any) -> None:
        """What every backend does once its store is open: check the embedder against the
        stored one, fill old chunks' context, and open the dense and sparse views."""
        self.embedder = embedder
        self._lock = RWLock()
        self._write_lock = threading.Lock()  # one writer at a time, embedding included
        self._sparse = sparse
        self._sparse_lock = threading.Lock()
        self._shadow: tuple[EmbedderLike, str, int] | None = None  # a re-embedding in progress
        # ((space, fusion method), weight per language) of the stored fit
        self._fitted: tuple[tuple[str, str], dict[str, float]] | None = None
        self.space = self._check_identity()
        self.text_version = int(self.store.get_meta(TEXT_KEY) or 1)
        self._fill_contexts()
        if self.text_version < TEXT_VERSION:
            log.warning(
                "the index at %s was embedded without chunk context (text version %d, this "
                "ragtune embeds version %d); it keeps working as it was: run 'ragtune reindex' "
                "to re-embed it with titles and sections",
                self.location,
                self.text_version,
                TEXT_VERSION,
            )
        self._index, self._snap_seq = self._load_index()
        log.info("retriever open: %d documents, %d chunks", len(self), len(self._index))

    def _load_index(self) -> tuple[Any, int]:
        """The dense view of the active space and the change it is current to."""
        return snapshot.load(
            self.folder, self.store, self.space, self.config.vector_index, self.embedder.dim
        )

    def _rebuilt_index(self, space: str, dim: int) -> Any:
        """A dense view of ``space``, built from the stored vectors (a switch's target)."""
        return snapshot.rebuild(self.store, space, self.config.vector_index, dim)

    def _check_identity(self) -> str:
        mine = json.dumps(self.embedder.identity, sort_keys=True)
        stored = self.store.get_meta("embedder")
        if stored is None:
            self.store.set_meta("embedder", mine)
            self.store.set_meta("space", space_of(self.embedder.identity))
            self.store.set_meta(TEXT_KEY, str(TEXT_VERSION))
            self.store.set_meta(CONTEXT_KEY, "1")
        elif stored != mine:
            self.close()
            raise EmbedderMismatch(
                f"the index at {self.location} was built with embedder {stored}, not {mine}; "
                "open it with that embedder or run 'ragtune reindex' to re-embed"
            )
        return self.store.get_meta("space") or space_of(self.embedder.identity)

    @property
    def needs_reembedding(self) -> bool:
        """Whether the index's vectors were made from older embedding text (without chunk
        context): ``reindex`` with the same embedder brings it up to ``TEXT_VERSION``."""
        return self.text_version < TEXT_VERSION

    def _fill_contexts(self) -> None:
        """Give the chunks of an index written before chunks carried their context their
        document's title and section, once (BM25 reads them at once, vectors at a reindex)."""
        if self.store.get_meta(CONTEXT_KEY):
            return
        rows: list[tuple[int, str, str]] = []
        doc: DocumentRow | None = None
        sections = Sections("")
        for cid, doc_id, start in self.store.chunk_spans():
            if doc is None or doc.id != doc_id:
                doc = self.store.document(doc_id)
                if doc is None:
                    continue
                title = document_title(doc.text, doc.metadata)
                sections = Sections(doc.text, title, is_markdown(doc.text, doc.metadata))
            rows.append((cid, title, sections.at(start)))
        self.store.set_contexts(rows)
        self.store.set_meta(CONTEXT_KEY, "1")
        log.info("filled the title and section of %d chunks", len(rows))

    def _sparse_texts(self) -> tuple[list[int], list[str]]:
        """Ids and BM25 texts (with their context) of every live chunk."""
        rows = self.store.chunk_contexts()
        return [r.id for r in rows], [text_for(r, TEXT_VERSION) for r in rows]

    def close(self) -> None:
        """Snapshot the vector index, then release the store and the folder."""
        try:
            if hasattr(self, "_index") and self.store.last_change() != self._snap_seq:
                self.snapshot()
        finally:
            self.store.close()
            self._folder_lock.release()

    def snapshot(self) -> None:
        """Write the vector index and its manifest atomically; trim the replayed change log."""
        with self._lock.write():
            seq = self.store.last_change()
            snapshot.write(self.folder, self._index, self.space, seq, self.embedder.identity)
            self.store.trim_changes(seq)
            self._snap_seq = seq

    def __len__(self) -> int:
        return self.count_documents()

    @property
    def chunk_count(self) -> int:
        return len(self._index)

    def index_ids(self) -> np.ndarray:
        """Ids held by the vector index (for consistency checks)."""
        with self._lock.read():
            return self._index.ids()

    # ---- writes -------------------------------------------------------------------------
    def upsert(self, doc: DocumentIn) -> WriteResult:
        """Add or replace one document; unchanged content is a no-op and unchanged chunks keep
        their vectors (no re-embedding)."""
        return self.upsert_many([doc])[0]

    def upsert_many(self, docs: Sequence[DocumentIn]) -> list[WriteResult]:
        """Add or replace documents in one transaction; the whole batch is validated first and
        its new chunks are embedded together (batched), so either all land or none does."""
        with self._write_lock:
            plans = self._plan(docs)
            todo = [p for p in plans if isinstance(p, _Plan)]
            self._embed_plans(todo)
            written: list[Written] = []
            if todo:
                with self._lock.write():
                    written = self.store.replace_many([(p.record, p.chunks) for p in todo])
                    gone = [cid for w in written for cid in w.removed]
                    self._index.remove(np.asarray(gone, dtype=np.int64))
                    ids = [cid for w in written for cid in w.added]
                    if ids:
                        vectors = [c.vectors[self.space] for p in todo for c in p.chunks]
                        self._index.add(np.asarray(ids, dtype=np.int64), np.vstack(vectors))
                    texts = [text_for(c, TEXT_VERSION) for p in todo for c in p.chunks]
                    self._sparse.apply(gone, ids, texts)
        self._maybe_snapshot()
        versions = iter(w.version for w in written)  # the store's: another writer may have won
        return [
            replace(p.result, version=next(versions)) if isinstance(p, _Plan) else p for p in plans
        ]

    def has(self, doc_id: str) -> bool:
        """Whether a document is stored under ``doc_id``."""
        return self.store.document(doc_id) is not None

    def _plan(self, docs: Sequence[DocumentIn]) -> list[_Plan | WriteResult]:
        ids = [
            check_document(d, f"documents[{i}]." if len(docs) > 1 else "", self.has)
            for i, d in enumerate(docs)
        ]
        seen: dict[str, int] = {}
        for i, doc_id in enumerate(ids):
            if doc_id in seen:
                raise InvalidDocument(
                    f"documents[{i}].id: {doc_id!r} appears twice in one batch "
                    f"(first at documents[{seen[doc_id]}])"
                )
            seen[doc_id] = i
        plans: list[_Plan | WriteResult] = []
        for doc_id, doc in zip(ids, docs, strict=True):
            old = self.store.document(doc_id)
            digest = _doc_hash(doc.text, doc.metadata)
            if old is not None and old.hash == digest:
                plans.append(WriteResult(doc_id, old.version, "unchanged", 0))
                continue
            t = now()
            version = old.version + 1 if old else 1
            record = DocumentRow(
                doc_id, version, doc.text, doc.metadata, digest, old.created if old else t, t
            )
            title = document_title(doc.text, doc.metadata)
            markdown = is_markdown(doc.text, doc.metadata)
            size, overlap = self.config.chunk_size, self.config.chunk_overlap
            pieces = split(doc.text, size, overlap, markdown, title)
            status = "updated" if old else "added"
            result = WriteResult(doc_id, version, status, len(pieces))
            plans.append(_Plan(record, pieces, title, result))
        return plans

    def _embed_plans(self, plans: list[_Plan]) -> None:
        """Fill each plan's chunks with vectors for the active space (and a shadow one, during
        a re-embedding), embedding only content not already stored, in one batched call."""
        spaces = [(self.embedder, self.space, self.text_version)]
        if self._shadow is not None:
            spaces.append(self._shadow)
        for p in plans:
            p.chunks = [
                NewChunk(c.ordinal, c.start, c.end, c.text, "", {}, p.title, c.section)
                for c in p.pieces
            ]
        for embedder, space, version in spaces:
            # the reuse key is the text embedded, its context included
            texts = {
                text_hash(text_for(c, version)): text_for(c, version)
                for p in plans
                for c in p.chunks
            }
            known = self.store.vectors_by_hash(space, list(texts))
            todo = [h for h in texts if h not in known]
            if todo:
                fresh = embedder.encode([texts[h] for h in todo])  # (len(todo), dim)
                known.update(zip(todo, fresh, strict=True))
            for p in plans:
                for c in p.chunks:
                    h = text_hash(text_for(c, version))
                    c.vectors[space], c.hashes[space] = known[h], h
        for p in plans:
            p.chunks = [
                NewChunk(
                    c.ordinal,
                    c.start,
                    c.end,
                    c.text,
                    text_hash(text_for(c, TEXT_VERSION)),
                    c.vectors,
                    c.title,
                    c.section,
                    c.hashes,
                )
                for c in p.chunks
            ]

    def delete(self, doc_ids: Sequence[str]) -> None:
        """Delete documents; raises DocumentNotFound (deleting nothing) if any is unknown."""
        with self._write_lock, self._lock.write():
            try:
                removed = self.store.delete(doc_ids)
            except KeyError as exc:
                raise DocumentNotFound(str(exc.args[0])) from None
            self._index.remove(np.asarray(removed, dtype=np.int64))
            self._sparse.apply(removed, [], [])
        self._maybe_snapshot()

    def _maybe_snapshot(self) -> None:
        if self.store.last_change() - self._snap_seq >= self.config.snapshot_every:
            self.snapshot()

    # ---- re-embedding -------------------------------------------------------------------
    def reindex(
        self,
        embedder: EmbedderLike,
        batch: int = 256,
        progress: Callable[[int, int], None] | None = None,
        stop: threading.Event | None = None,
    ) -> dict[str, Any]:
        """Re-embed every chunk with ``embedder`` into a shadow space while searches and writes
        go on, then switch to it atomically. The old space's vectors stay for rollback (those
        of any space before it are dropped, so the store holds at most two). When
        ``stop`` is set it returns unswitched after the current batch; the shadow vectors
        written so far are kept, so running it again continues where it stopped."""
        if embedder.dim <= 0:
            raise ValueError("embedder has no dimension")
        new_space = space_of(embedder.identity)
        if new_space == self.space:
            return {"switched": False, "reason": "already built with this embedder"}
        with self._write_lock:
            self._shadow = (embedder, new_space, TEXT_VERSION)
        try:
            done, total = 0, self.chunk_count
            while True:
                if stop is not None and stop.is_set():
                    return {"switched": False, "reason": "stopped", "embedded": done}
                rows = self.store.missing_vectors(new_space, batch)
                if not rows:
                    break
                self._embed_missing(embedder, new_space, rows)
                done += len(rows)
                if progress:
                    progress(done, total)
            with self._write_lock:
                return self._switch(embedder, new_space)
        finally:
            self._shadow = None

    def _switch(self, embedder: EmbedderLike, new_space: str) -> dict[str, Any]:
        rows = self.store.missing_vectors(new_space, 1 << 30)
        if rows:  # written between the last batch and the write lock
            self._embed_missing(embedder, new_space, rows)
        index = self._rebuilt_index(new_space, embedder.dim)
        with self._lock.write():
            previous = self.space
            self.store.set_meta("previous_embedder", self.store.get_meta("embedder") or "")
            self.store.set_meta("previous_space", previous)
            self.store.set_meta("embedder", json.dumps(embedder.identity, sort_keys=True))
            self.store.set_meta("space", new_space)
            self.store.set_meta("previous_embedding_text", str(self.text_version))
            self.store.set_meta(TEXT_KEY, str(TEXT_VERSION))
            self.embedder, self.space, self._index = embedder, new_space, index
            self.text_version = TEXT_VERSION
        dropped = self.store.drop_spaces([new_space, previous])  # older ones: no way back to them
        if dropped:
            log.info("re-embedding: dropped %d vectors of spaces before the previous one", dropped)
        self.snapshot()
        return {"switched": True, "from": previous, "to": new_space, "chunks": len(index)}

    def _embed_missing(self, embedder: EmbedderLike, space: str, rows: list[ChunkContext]) -> None:
        texts = [text_for(r, TEXT_VERSION) for r in rows]
        vectors = embedder.encode(texts)  # (len(rows), dim)
        hashes = [text_hash(t) for t in texts]
        self.store.put_vectors(space, list(zip([r.id for r in rows], hashes, vectors, strict=True)))

    # ---- reads --------------------------------------------------------------------------
    def documents(
        self, offset: int = 0, limit: int = 100, contains: str | None = None
    ) -> list[DocumentRow]:
        """One page of the stored documents, in id order; with ``contains``, only those whose
        id or text holds that text (ASCII case ignored)."""
        return self.store.documents(offset, limit, contains)

    def count_documents(self, contains: str | None = None) -> int:
        """How many documents are stored (whose id or text holds ``contains``, if given)."""
        return self.store.count_documents(contains)

    def previous_embedder(self) -> dict[str, Any] | None:
        """The identity of the embedder before the last switch (a rollback's target)."""
        raw = self.store.get_meta("previous_embedder")
        return json.loads(raw) if raw else None

    def get(self, doc_id: str) -> DocumentRow:
        row = self.store.document(doc_id)
        if row is None:
            raise DocumentNotFound(doc_id)
        return row

    def search(
        self,
        query: str,
        k: int = 5,
        mode: str = "hybrid",
        filters: dict[str, Any] | None = None,
        reranker: Any = None,
    ) -> list[Hit]:
        """The ``k`` best chunks for ``query``; with a ``reranker`` (see ``retriever.rerank``),
        the first ``config.candidates`` fused chunks are rescored by it."""
        if reranker is not None:
            pool = self.search(query, max(k, self.config.candidates), mode, filters)
            return list(reranker.rerank(query, pool, k))
        if mode not in SEARCH_MODES:
            raise InvalidSearch(f"mode: one of {SEARCH_MODES}, got {mode!r}")
        if not isinstance(k, int) or k < 1:
            raise InvalidSearch(f"k: must be an integer >= 1, got {k!r}")
        try:
            filters = check_filters(filters)
        except ValueError as exc:
            raise InvalidSearch(str(exc)) from None
        if filters:
            depth = max(self.config.candidates, k) * 4  # over-fetch: filters drop some
        elif mode == "hybrid":
            depth = max(self.config.candidates, k)  # fusion needs both lists deep enough
        else:
            depth = k
        with self._lock.read():
            qvec = self.embedder.encode([query])[0] if mode != "sparse" else None  # (dim,)
            with self.store.reading():  # both lists and the rows from one state of the store
                dense = self._index.search(qvec, depth) if qvec is not None else []
                sparse = self._sparse_search(query, depth) if mode != "dense" else []
                ranked = (
                    dense
                    if mode == "dense"
                    else sparse
                    if mode == "sparse"
                    else self._fuse(dense, sparse, self.dense_weight_for(query))
                )
                if not filters:
                    ranked = ranked[:k]
                rows = self.store.chunks([cid for cid, _ in ranked])
        hits = []
        for cid, score in ranked:
            row = rows.get(cid)
            if row is None or not _matches(row.metadata, filters):
                continue
            hits.append(
                Hit(
                    row.doc_id,
                    cid,
                    row.start,
                    row.end,
                    score,
                    row.text,
                    row.metadata,
                    row.title,
                    row.section,
                )
            )
            if len(hits) == k:
                break
        return hits

    def _sparse_search(self, query: str, depth: int) -> list[tuple[int, float]]:
        with self._sparse_lock:
            return self._sparse.search(query, depth)

    def dense_weight_for(self, query: str) -> float:
        """The dense share for ``query``: the one fitted for its language on this vector space
        (``fit_dense_weights``), else lower when it is written in a script (CJK) that an
        English-only embedder was not trained on."""
        return self._share_for(query_language(query))

    def _share_for(self, lang: str) -> float:
        fitted = self._fitted_weights()
        if lang in fitted:
            return float(fitted[lang])
        languages = getattr(self.embedder, "languages", None)
        if languages is not None and "zh" not in languages and lang == "zh":
            return self.config.foreign_dense_weight
        return self.config.dense_weight

    def fusion_shares(self) -> dict[str, Any]:
        """The hybrid dense share in use per query language, and how each was chosen."""
        fit = self._stored_fit()
        fitted = self._fitted_weights()
        return {
            "dense_share": {lang: self._share_for(lang) for lang in ("en", "zh")},
            "fitted": sorted(fitted),
            "method": fit.get("method") if fitted else None,
            "why": fit.get("why", {}) if fitted else {},
        }

    def _stored_fit(self) -> dict[str, Any]:
        """The last fit's report as stored (``{}`` when none)."""
        raw = self.store.get_meta(FITTED_KEY)
        return json.loads(raw) if raw else {}

    def _fitted_weights(self) -> dict[str, float]:
        cached = self._fitted
        if cached is None or cached[0] != (self.space, self.config.fusion):
            fit = self._stored_fit()
            weights = fit.get("weights", {}) if self._fit_applies(fit) else {}
            cached = self._fitted = ((self.space, self.config.fusion), weights)
        return cached[1]

    def _fit_applies(self, fit: dict[str, Any]) -> bool:
        """Whether a stored fit was made for this vector space and fusion method (a fit made
        before fits named their method applies to the default, ``weighted``)."""
        method = fit.get("fusion", "weighted")
        return fit.get("space") == self.space and method == self.config.fusion

    @property
    def fusion_fit_due(self) -> bool:
        """Whether ``fit_fusion`` should run: never fitted for this vector space, or the index
        has changed size by a quarter since, and it holds enough chunks to sample from."""
        if self.chunk_count < FIT_MIN_CHUNKS:
            return False
        fit = self._stored_fit()
        if not self._fit_applies(fit) or "chunks" not in fit:
            return True
        return abs(self.chunk_count - int(fit["chunks"])) > 0.25 * int(fit["chunks"])

    def fit_fusion(self, queries: int = 400, seed: int = 0, k: int = 10) -> dict[str, Any]:
        """Fit the hybrid dense share per query language without labelled questions, on
        pseudo-queries from the index's own chunks (``retriever.pseudo``: a sentence whose own
        chunk is held out, answered by another chunk of its document). See
        ``fit_dense_weights`` for how a share is chosen and stored."""
        with self._lock.read():
            spans = self.store.chunk_spans()
            texts = dict(zip(*self.store.chunk_texts(), strict=True))
        rows = [(cid, doc_id, texts[cid]) for cid, doc_id, _ in spans if cid in texts]
        pseudo = pseudo_queries(rows, queries, seed=seed)
        items = [(p.text, p.doc_id, p.held_out) for p in pseudo]
        return self._fit_shares(items, k, method="pseudo-queries")

    def fit_dense_weights(
        self, labelled: Sequence[tuple[str, str]], k: int = 10, min_queries: int = 20
    ) -> dict[str, Any]:
        """Fit the hybrid dense share per query language (zh, en) on labelled ``(query,
        doc_id)`` pairs. Each share of ``SHARE_GRID`` scores each query by the mean of its
        document's recall at 5, ``k`` and 2``k`` and its reciprocal rank in the top ``k``;
        ``fusion.pick_share`` takes the best share only where it beats the better single side
        beyond noise. Stored for the current vector space (a switch leaves it behind);
        languages with fewer than ``min_queries`` keep the defaults. Returns what was fitted,
        with recall@k per share."""
        items = [(query, doc_id, None) for query, doc_id in labelled]
        return self._fit_shares(items, k, method="labelled", min_queries=min_queries)

    def _fit_shares(
        self,
        items: Sequence[tuple[str, str, int | None]],
        k: int,
        method: str,
        min_queries: int = FIT_MIN_QUERIES,
    ) -> dict[str, Any]:
        depth = max(self.config.candidates, k)
        groups: dict[str, list[tuple[str, str, int | None]]] = {}
        for item in items:
            groups.setdefault(query_language(item[0]), []).append(item)
        report: dict[str, Any] = {
            "space": self.space,
            "method": method,
            "fusion": self.config.fusion,
            "chunks": self.chunk_count,
            "k": k,
            "queries": {lang: len(group) for lang, group in sorted(groups.items())},
            "weights": {},
            "recall": {},
            "why": {},
        }
        for lang, group in sorted(groups.items()):
            if len(group) < min_queries:
                continue
            lists = []
            # encoded outside the lock, searched one query at a time under it, so writes wait
            # for one search at most (a switch meanwhile stores the fit for the old space)
            vectors = self.embedder.encode([q for q, _, _ in group])  # (n, dim)
            for (query, doc_id, held), qvec in zip(group, vectors, strict=True):
                with self._lock.read():
                    dense = [h for h in self._index.search(qvec, depth + 1) if h[0] != held]
                    sparse = [h for h in self._sparse_search(query, depth + 1) if h[0] != held]
                lists.append((doc_id, dense[:depth], sparse[:depth]))
            owners = self.store.chunks(sorted({c for _, d, s in lists for c, _ in d + s}))
            scores, recall = {}, {}
            for w in SHARE_GRID:
                ranks = [
                    _doc_rank(self._fuse(dense, sparse, w), owners, doc_id, 2 * k)
                    for doc_id, dense, sparse in lists
                ]
                scores[w] = np.array([_rank_score(r, k) for r in ranks])
                recall[str(w)] = round(sum(r < k for r in ranks) / len(ranks), 4)
            share, why = fusion.pick_share(scores)
            report["weights"][lang], report["recall"][lang], report["why"][lang] = (
                share,
                recall,
                why,
            )
            log.info(
                "hybrid dense share for %s (%s, %d queries): %.1f, %s",
                lang,
                method,
                len(group),
                share,
                why,
            )
        self.store.set_meta(FITTED_KEY, json.dumps(report))
        self._fitted = None
        return report

    def _fuse(
        self, dense: list[tuple[int, float]], sparse: list[tuple[int, float]], w: float
    ) -> list[tuple[int, float]]:
        lists = [(w, dense), (1 - w, sparse)]
        if w <= 0.0 or w >= 1.0:  # that side alone: its own order, the fused score's scale
            lists = [(1.0, dense if w >= 1.0 else sparse)]
        if self.config.fusion == "rrf":
            return fusion.rrf(lists, self.config.rrf_k)
        return fusion.weighted(lists)


def query_language(text: str) -> str:
    """The language a hybrid share is kept for: ``zh`` for text with CJK characters, else
    ``en``."""
    return "zh" if CJK.search(text) else "en"


def _doc_rank(
    ranked: list[tuple[int, float]], owners: dict[int, Any], doc_id: str, depth: int
) -> int:
    """Where ``doc_id`` first appears among the distinct documents of ``ranked`` (0 = first),
    or ``depth`` when not within the first ``depth`` of them."""
    seen: list[str] = []
    for cid, _ in ranked:
        owner = owners.get(cid)
        if owner is None or owner.doc_id in seen:
            continue
        if owner.doc_id == doc_id:
            return len(seen)
        seen.append(owner.doc_id)
        if len(seen) == depth:
            break
    return depth


def _rank_score(rank: int, k: int) -> float:
    """A query's score for fitting: the mean of hit@5, hit@k and hit@2k and the reciprocal
    rank within the top k; smoother than recall@k alone, so fewer shares tie on noise."""
    hits = (rank < 5) + (rank < k) + (rank < 2 * k)
    return (hits / 3 + (1 / (rank + 1) if rank < k else 0.0)) / 2


def check_document(
    doc: DocumentIn, where: str = "", stored: Callable[[str], bool] | None = None
) -> str:
    """The id the document is written under: its own, or its ``stored_as`` when only that one
    is stored, or a new random one if it has none; ``InvalidDocument`` whose message starts
    with the bad field, prefixed by ``where`` (``documents[3].``). An id that ``stored`` says
    is stored is held to ``check_any_id`` (a row stored before the newer id rules can still be
    updated), any other to ``check_id``; without ``stored`` every id is taken as new."""
    doc_id = uuid.uuid4().hex if doc.id is None else doc.id
    try:
        check_text(doc.text, f"{where}text")
        check_any_id(doc_id, f"{where}id")
        if stored is None or not stored(doc_id):
            if _stored_as(doc, stored):
                doc_id = doc.stored_as or doc_id
            else:
                check_id(doc_id, f"{where}id")
        check_metadata(doc.metadata, f"{where}metadata")
    except ValueError as exc:
        raise InvalidDocument(str(exc)) from None
    return doc_id


def _stored_as(doc: DocumentIn, stored: Callable[[str], bool] | None) -> bool:
    """Whether the document updates the row stored under its ``stored_as``."""
    if stored is None or doc.stored_as is None:
        return False
    try:
        check_any_id(doc.stored_as)
    except ValueError:
        return False
    return stored(doc.stored_as)


def _matches(metadata: dict[str, Any], filters: dict[str, Any] | None) -> bool:
    if not filters:
        return True
    for key, want in filters.items():
        have = metadata.get(key)
        if isinstance(want, list):
            # by equality, not sets: values may be unhashable (lists, objects)
            if have not in want and not (isinstance(have, list) and any(h in want for h in have)):
                return False
        elif have != want and not (isinstance(have, list) and want in have):
            return False
    return True

"""SQLite (WAL) store: the source of truth for documents, chunks, vectors and the change log.

Chunk ids come from ``AUTOINCREMENT`` and are never reused, so they serve as stable FAISS ids.
Vectors are float32 blobs keyed by (space, chunk id), where a space names the embedder that made
them, so a re-embedding can fill a new space while the old one serves and stays for rollback.
Every write is one transaction that also appends to ``changes``, so a vector-index snapshot plus
the newer changes rebuilds the live index; a crash leaves the old state or the new, never half.

Reads never fail on what a row holds: metadata is served as stored, except that an object or
list nested deeper than ``READ_MAX_DEPTH`` is served as its JSON text (a string) in its place,
and metadata that is not a JSON object at all is served as ``{RAW_METADATA_KEY: "<text>"}``
(rows written before ``retriever.validation`` bounded metadata may hold either).
This module knows nothing of embedding, FAISS or BM25.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
READ_MAX_DEPTH = 64  # deeper subtrees are read as JSON text (JSON encoders stop near 256)
RAW_METADATA_KEY = "_metadata_json"  # holds stored metadata that is not a JSON object
MAX_OFFSET = 2**62  # SQLite integers are 64-bit; a larger page offset is an empty page anyway
SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY, version INTEGER NOT NULL, text TEXT NOT NULL, metadata TEXT NOT NULL,
    hash TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT, doc_id TEXT NOT NULL REFERENCES documents(id),
    ordinal INTEGER NOT NULL, start INTEGER NOT NULL, end INTEGER NOT NULL, text TEXT NOT NULL,
    hash TEXT NOT NULL, title TEXT NOT NULL DEFAULT '', section TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS vectors (
    space TEXT NOT NULL, chunk_id INTEGER NOT NULL REFERENCES chunks(id) ON DELETE CASCADE,
    hash TEXT NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (space, chunk_id));
CREATE INDEX IF NOT EXISTS vectors_hash ON vectors(space, hash);
CREATE INDEX IF NOT EXISTS vectors_chunk ON vectors(chunk_id);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, op TEXT NOT NULL, chunk_id INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
CREATE INDEX IF NOT EXISTS chunks_hash ON chunks(hash);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS chunk_added AFTER INSERT ON chunks
    BEGIN INSERT INTO changes (op, chunk_id) VALUES ('add', new.id); END;
CREATE TRIGGER IF NOT EXISTS chunk_removed AFTER DELETE ON chunks
    BEGIN INSERT INTO changes (op, chunk_id) VALUES ('remove', old.id); END;
"""


@dataclass(frozen=True)
class DocumentRow:
    id: str
    version: int
    text: str
    metadata: dict[str, Any]
    hash: str
    created: float
    updated: float


@dataclass(frozen=True)
class ChunkRow:
    id: int
    doc_id: str
    ordinal: int
    start: int
    end: int
    text: str
    metadata: dict[str, Any]
    title: str = ""
    section: str = ""


@dataclass(frozen=True)
class NewChunk:
    ordinal: int
    start: int
    end: int
    text: str
    hash: str
    vectors: dict[str, np.ndarray]  # space -> (dim,) float32
    title: str = ""  # the document's title and the chunk's heading path: its context
    section: str = ""
    hashes: dict[str, str] = field(default_factory=dict)  # space -> hash, where not ``hash``


@dataclass(frozen=True)
class ChunkContext:
    id: int
    text: str
    title: str
    section: str


class Written(NamedTuple):
    """What one document's write did: the chunk ids it removed and added, and the version it
    was stored as."""

    removed: list[int]
    added: list[int]
    version: int


def _blob(v: np.ndarray) -> bytes:
    return np.ascontiguousarray(v, dtype=np.float32).tobytes()


class Store:
    """Documents and chunks in one SQLite file; one connection guarded by a lock."""

    def __init__(self, path: Path, durability: str = "process") -> None:
        """``durability``: "process" (WAL, synchronous=NORMAL) keeps every acknowledged write
        through a crash or kill -9 of the process; "power" (synchronous=FULL) also through a
        power loss or OS crash, at the cost of an fsync per write."""
        if durability not in ("process", "power"):
            raise ValueError(f"durability must be process or power, got {durability!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        sync = "FULL" if durability == "power" else "NORMAL"
        self._db.execute(f"PRAGMA synchronous={sync}")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA cache_size=-65536")  # 64 MiB of pages
        self._db.execute("PRAGMA mmap_size=268435456")
        self._check_schema()  # creates the schema in a new file
        self._lock = threading.RLock()
        self._last_seq: int | None = None

    def _check_schema(self) -> None:
        tables = {
            r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        if "meta" in tables:
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None or int(row[0]) != SCHEMA_VERSION:
                found = row[0] if row else "none"
                raise ValueError(
                    f"{self.path} has store schema {found}, this ragtune reads "
                    f"{SCHEMA_VERSION}; re-ingest into a new data dir"
                )
            self._add_context_columns()
        elif tables:
            raise ValueError(f"{self.path} is not a ragtune store")
        else:
            self._db.executescript(SCHEMA)
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

    def _add_context_columns(self) -> None:
        """Give a store written before chunks carried their context its title and section
        columns (empty until ``set_contexts`` fills them)."""
        have = {r[1] for r in self._db.execute("PRAGMA table_info(chunks)")}
        for name in ("title", "section"):
            if name not in have:
                self._db.execute(f"ALTER TABLE chunks ADD COLUMN {name} TEXT NOT NULL DEFAULT ''")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def document(self, doc_id: str) -> DocumentRow | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, version, text, metadata, hash, created, updated FROM documents "
                "WHERE id=?",
                (doc_id,),
            ).fetchone()
        return _doc(row) if row else None

    def documents(
        self, offset: int = 0, limit: int = 100, contains: str | None = None
    ) -> list[DocumentRow]:
        """A page in id order; with ``contains``, only documents whose id or text holds it
        (ASCII case ignored)."""
        where, args = contains_clause(contains)
        with self._lock:
            rows = self._db.execute(
                "SELECT id, version, text, metadata, hash, created, updated FROM documents "
                f"{where} ORDER BY id LIMIT ? OFFSET ?",
                (*args, max(0, min(limit, MAX_OFFSET)), max(0, min(offset, MAX_OFFSET))),
            ).fetchall()
        return [_doc(r) for r in rows]

    def count_documents(self, contains: str | None = None) -> int:
        where, args = contains_clause(contains)
        with self._lock:
            sql = f"SELECT COUNT(*) FROM documents {where}"
            return int(self._db.execute(sql, args).fetchone()[0])

    def vectors_by_hash(self, space: str, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored vectors in ``space`` of chunks with these content hashes (skip re-embedding)."""
        if not hashes:
            return {}
        marks = ",".join("?" * len(hashes))
        with self._lock:
            rows = self._db.execute(
                f"SELECT hash, vector FROM vectors WHERE space=? AND hash IN ({marks})",
                [space, *hashes],
            ).fetchall()
        return {h: np.frombuffer(v, dtype=np.float32) for h, v in rows}

    def replace_many(self, docs: Sequence[tuple[DocumentRow, Sequence[NewChunk]]]) -> list[Written]:
        """Write documents and their chunks in one transaction; what each write did."""
        with self._lock, self._transaction():
            return [self._replace(doc, chunks) for doc, chunks in docs]

    def _replace(self, doc: DocumentRow, chunks: Sequence[NewChunk]) -> Written:
        removed = self._remove_chunks(doc.id)
        metadata = json.dumps(doc.metadata, ensure_ascii=False)
        self._db.execute(
            "INSERT OR REPLACE INTO documents VALUES (?, ?, ?, ?, ?, ?, ?)",
            (doc.id, doc.version, doc.text, metadata, doc.hash, doc.created, doc.updated),
        )
        added = []
        for c in chunks:
            cur = self._db.execute(
                "INSERT INTO chunks (doc_id, ordinal, start, end, text, hash, title, section) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (doc.id, c.ordinal, c.start, c.end, c.text, c.hash, c.title, c.section),
            )
            cid = int(cur.lastrowid or 0)
            added.append(cid)
            self._db.executemany(
                "INSERT INTO vectors VALUES (?, ?, ?, ?)",
                [
                    (space, cid, c.hashes.get(space, c.hash), _blob(v))
                    for space, v in c.vectors.items()
                ],
            )
        self._advance(len(added))  # the chunk_added trigger logged one change per chunk
        return Written(removed, added, doc.version)

    def _remove_chunks(self, doc_id: str) -> list[int]:
        """Delete a document's chunks; their vectors go by cascade and the chunk_removed
        trigger logs each removal."""
        rows = self._db.execute("DELETE FROM chunks WHERE doc_id=? RETURNING id", (doc_id,))
        removed = [int(r[0]) for r in rows.fetchall()]
        self._advance(len(removed))
        return removed

    def _advance(self, n: int) -> None:
        if self._last_seq is not None:
            self._last_seq += n

    def delete(self, doc_ids: Sequence[str]) -> list[int]:
        """Delete documents and their chunks in one transaction; return the removed chunk ids.
        If any id is unknown, nothing is deleted and ``KeyError(id)`` is raised."""
        with self._lock, self._transaction():
            removed: list[int] = []
            for doc_id in doc_ids:
                removed += self._remove_chunks(doc_id)
                gone = self._db.execute("DELETE FROM documents WHERE id=?", (doc_id,)).rowcount
                if gone == 0:
                    raise KeyError(doc_id)  # rolls the whole transaction back
        return removed

    def chunks(self, ids: Sequence[int]) -> dict[int, ChunkRow]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self._lock:
            rows = self._db.execute(
                f"SELECT c.id, c.doc_id, c.ordinal, c.start, c.end, c.text, d.metadata, c.title, "
                f"c.section FROM chunks c JOIN documents d ON d.id = c.doc_id "
                f"WHERE c.id IN ({marks})",
                [int(i) for i in ids],
            ).fetchall()
        return {
            r[0]: ChunkRow(r[0], r[1], r[2], r[3], r[4], r[5], read_metadata(r[6]), r[7], r[8])
            for r in rows
        }

    def chunk_texts(self) -> tuple[list[int], list[str]]:
        """Ids and texts of every live chunk, in id order."""
        with self._lock:
            rows = self._db.execute("SELECT id, text FROM chunks ORDER BY id").fetchall()
        return [int(r[0]) for r in rows], [r[1] for r in rows]

    def chunk_contexts(self) -> list[ChunkContext]:
        """Every live chunk with its title and section, in id order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, text, title, section FROM chunks ORDER BY id"
            ).fetchall()
        return [ChunkContext(int(r[0]), r[1], r[2], r[3]) for r in rows]

    def chunk_spans(self) -> list[tuple[int, str, int]]:
        """(id, document id, start) of every live chunk, by document."""
        with self._lock:
            rows = self._db.execute("SELECT id, doc_id, start FROM chunks ORDER BY doc_id, id")
            return [(int(r[0]), r[1], int(r[2])) for r in rows.fetchall()]

    def set_contexts(self, rows: Sequence[tuple[int, str, str]]) -> None:
        """Set (chunk id, title, section) of existing chunks, in one transaction."""
        with self._lock, self._transaction():
            self._db.executemany(
                "UPDATE chunks SET title=?, section=? WHERE id=?",
                [(title, section, cid) for cid, title, section in rows],
            )

    def live_ids(self) -> np.ndarray:
        with self._lock:
            rows = self._db.execute("SELECT id FROM chunks ORDER BY id").fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def vectors(
        self, space: str, ids: Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) in ``space`` for live chunks (all, or those in ``ids``), id order."""
        sql = (
            "SELECT v.chunk_id, v.vector FROM vectors v JOIN chunks c ON c.id = v.chunk_id "
            "WHERE v.space=?"
        )
        args: list[Any] = [space]
        if ids is not None:
            if not len(ids):
                return np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.float32)
            sql += f" AND v.chunk_id IN ({','.join('?' * len(ids))})"
            args += [int(i) for i in ids]
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY v.chunk_id", args).fetchall()
        if not rows:
            return np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.float32)
        out_ids = np.array([r[0] for r in rows], dtype=np.int64)
        return out_ids, np.vstack([np.frombuffer(r[1], dtype=np.float32) for r in rows])

    def missing_vectors(self, space: str, limit: int) -> list[ChunkContext]:
        """Up to ``limit`` live chunks with no vector in ``space``, with their context."""
        with self._lock:
            rows = self._db.execute(
                "SELECT c.id, c.text, c.title, c.section FROM chunks c WHERE NOT EXISTS (SELECT "
                "1 FROM vectors v WHERE v.space=? AND v.chunk_id=c.id) ORDER BY c.id LIMIT ?",
                (space, limit),
            ).fetchall()
        return [ChunkContext(int(r[0]), r[1], r[2], r[3]) for r in rows]

    def put_vectors(self, space: str, rows: Sequence[tuple[int, str, np.ndarray]]) -> None:
        """Store vectors for chunks that still exist (a chunk deleted meanwhile is skipped)."""
        with self._lock, self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO vectors SELECT ?, ?, ?, ? "
                "WHERE EXISTS (SELECT 1 FROM chunks WHERE id=?)",
                [(space, cid, h, _blob(v), cid) for cid, h, v in rows],
            )

    def drop_spaces(self, keep: Sequence[str]) -> int:
        """Delete the vectors of every space not in ``keep``; returns how many rows went."""
        marks = ", ".join("?" for _ in keep)
        with self._lock, self._transaction():
            cur = self._db.execute(f"DELETE FROM vectors WHERE space NOT IN ({marks})", list(keep))
            return int(cur.rowcount)

    def spaces(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT space FROM vectors ORDER BY space").fetchall()
        return [r[0] for r in rows]

    def last_change(self) -> int:
        """The sequence number of the newest change (kept in memory; one writer per file)."""
        with self._lock:
            if self._last_seq is None:
                row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name='changes'")
                found = row.fetchone()
                self._last_seq = int(found[0]) if found else 0
            return self._last_seq

    def changes_after(self, seq: int) -> list[tuple[int, str, int]]:
        with self._lock:
            return [
                tuple(r)
                for r in self._db.execute(  # type: ignore[misc]
                    "SELECT seq, op, chunk_id FROM changes WHERE seq>? ORDER BY seq", (seq,)
                )
            ]

    def trim_changes(self, upto: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM changes WHERE seq<=?", (upto,))

    def reading(self) -> contextlib.AbstractContextManager[None]:
        """Reads made inside see one state (here: the one connection's, under the retriever's
        read lock, already)."""
        return contextlib.nullcontext()

    def _transaction(self) -> _Tx:
        return _Tx(self)


class _Tx:
    def __init__(self, store: Store) -> None:
        self.store = store

    def __enter__(self) -> None:
        self.store._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.store._db.execute("ROLLBACK" if exc_type else "COMMIT")
        if exc_type:
            self.store._last_seq = None  # re-read: the rolled-back changes never happened


def _doc(row: tuple) -> DocumentRow:
    return DocumentRow(row[0], row[1], row[2], read_metadata(row[3]), row[4], row[5], row[6])


def read_metadata(raw: str) -> dict[str, Any]:
    """Stored metadata as something every reader can serve (see the module docstring)."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        log.warning(
            "stored metadata is not a JSON object; served as text under %s", RAW_METADATA_KEY
        )
        return {RAW_METADATA_KEY: str(raw)}
    return _clip(value, 1)  # type: ignore[no-any-return]


def _clip(value: Any, depth: int) -> Any:
    """``value`` with every object or list deeper than ``READ_MAX_DEPTH`` replaced by its JSON."""
    if isinstance(value, dict):
        if depth > READ_MAX_DEPTH:
            return _as_text(value)
        return {_whole(k): _clip(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        if depth > READ_MAX_DEPTH:
            return _as_text(value)
        return [_clip(v, depth + 1) for v in value]
    return _whole(value) if isinstance(value, str) else value


def _whole(text: str) -> str:
    """``text`` with any lone surrogate (a ``\\ud800`` escape in stored JSON, which no UTF-8
    response can carry) replaced by U+FFFD."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _as_text(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (ValueError, RecursionError):
        return "(metadata too deeply nested to show)"


def now() -> float:
    return time.time()


def contains_clause(
    text: str | None, like: str = "LIKE", mark: str = "?"
) -> tuple[str, tuple[str, ...]]:
    """The WHERE clause (and its arguments) keeping documents whose id or text contains
    ``text``, its own % _ and \\ taken literally; ``like`` and ``mark`` are the database's
    operator and placeholder (SQLite's LIKE ignores the case of ASCII letters only)."""
    if not text:
        return "", ()
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    pattern = f"%{escaped}%"
    match = f"{like} {mark} ESCAPE '\\'"
    return f"WHERE id {match} OR text {match}", (pattern, pattern)

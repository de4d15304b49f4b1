"""SQLite (WAL) store: the source of truth for documents, chunks and their vectors.

Chunk ids come from ``AUTOINCREMENT`` and are never reused, so they serve as stable FAISS ids.
Vectors live beside their chunk as float32 blobs, so the vector index can always be rebuilt from
here. Every write is one transaction: a crash leaves the old state or the new, never half.
This module knows nothing of embedding, FAISS or BM25.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY, version INTEGER NOT NULL, text TEXT NOT NULL, metadata TEXT NOT NULL,
    hash TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT, doc_id TEXT NOT NULL REFERENCES documents(id),
    ordinal INTEGER NOT NULL, start INTEGER NOT NULL, end INTEGER NOT NULL, text TEXT NOT NULL,
    hash TEXT NOT NULL, vector BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
CREATE INDEX IF NOT EXISTS chunks_hash ON chunks(hash);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
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


@dataclass(frozen=True)
class NewChunk:
    ordinal: int
    start: int
    end: int
    text: str
    hash: str
    vector: np.ndarray  # (dim,) float32


class Store:
    """Documents and chunks in one SQLite file; one connection guarded by a lock."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        self._lock = threading.RLock()

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

    def documents(self, offset: int = 0, limit: int = 100) -> list[DocumentRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, version, text, metadata, hash, created, updated FROM documents "
                "ORDER BY id LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
        return [_doc(r) for r in rows]

    def count_documents(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM documents").fetchone()[0])

    def vectors_by_hash(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored vectors of chunks with these content hashes (to skip re-embedding)."""
        if not hashes:
            return {}
        marks = ",".join("?" * len(hashes))
        with self._lock:
            rows = self._db.execute(
                f"SELECT hash, vector FROM chunks WHERE hash IN ({marks})", list(hashes)
            ).fetchall()
        return {h: np.frombuffer(v, dtype=np.float32) for h, v in rows}

    def replace(self, doc: DocumentRow, chunks: Sequence[NewChunk]) -> tuple[list[int], list[int]]:
        """Write ``doc`` and its chunks in one transaction; return (removed ids, new ids)."""
        with self._lock, self._transaction():
            removed = [
                r[0] for r in self._db.execute("SELECT id FROM chunks WHERE doc_id=?", (doc.id,))
            ]
            self._db.execute("DELETE FROM chunks WHERE doc_id=?", (doc.id,))
            self._db.execute(
                "INSERT OR REPLACE INTO documents VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    doc.id,
                    doc.version,
                    doc.text,
                    json.dumps(doc.metadata, ensure_ascii=False),
                    doc.hash,
                    doc.created,
                    doc.updated,
                ),
            )
            added = []
            for c in chunks:
                cur = self._db.execute(
                    "INSERT INTO chunks (doc_id, ordinal, start, end, text, hash, vector) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        doc.id,
                        c.ordinal,
                        c.start,
                        c.end,
                        c.text,
                        c.hash,
                        np.ascontiguousarray(c.vector, dtype=np.float32).tobytes(),
                    ),
                )
                added.append(int(cur.lastrowid or 0))
        return removed, added

    def delete(self, doc_ids: Sequence[str]) -> list[int]:
        """Delete documents and their chunks in one transaction; return the removed chunk ids."""
        with self._lock, self._transaction():
            removed: list[int] = []
            for doc_id in doc_ids:
                removed += [
                    r[0]
                    for r in self._db.execute("SELECT id FROM chunks WHERE doc_id=?", (doc_id,))
                ]
                self._db.execute("DELETE FROM chunks WHERE doc_id=?", (doc_id,))
                self._db.execute("DELETE FROM documents WHERE id=?", (doc_id,))
        return removed

    def chunks(self, ids: Sequence[int]) -> dict[int, ChunkRow]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self._lock:
            rows = self._db.execute(
                f"SELECT c.id, c.doc_id, c.ordinal, c.start, c.end, c.text, d.metadata "
                f"FROM chunks c JOIN documents d ON d.id = c.doc_id WHERE c.id IN ({marks})",
                [int(i) for i in ids],
            ).fetchall()
        return {r[0]: ChunkRow(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6])) for r in rows}

    def all_chunks(self) -> Iterator[tuple[int, str, np.ndarray]]:
        """(id, text, vector) of every live chunk, in id order."""
        with self._lock:
            rows = self._db.execute("SELECT id, text, vector FROM chunks ORDER BY id").fetchall()
        for cid, text, vec in rows:
            yield int(cid), text, np.frombuffer(vec, dtype=np.float32)

    def _transaction(self) -> _Tx:
        return _Tx(self._db)


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def _doc(row: tuple) -> DocumentRow:
    return DocumentRow(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5], row[6])


def now() -> float:
    return time.time()

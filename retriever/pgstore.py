"""PostgreSQL store: documents, chunks, vectors (pgvector) and full-text search in one database.

The same methods as ``retriever.store.Store`` (the SQLite one), over a pool of psycopg
connections, so that several processes can serve one index. Every write is one transaction:
a document's old chunks, its row and its new chunks with their vectors and their ``tsvector``
commit together or not at all. Writers of the same document are serialised by a transaction
advisory lock on its id (so two replicas writing one document never leave both versions'
chunks), and every writer holds a shared lock that a switch of the active vector space takes
exclusively: a write embedded for a space that is no longer active fails with ``SpaceChanged``
instead of committing chunks the new space has no vector for.

Vectors of each space (an embedder and what it embeds: ``retriever.index.space_of``) live in
their own table ``vec_<space>`` with a ``vector(dim)`` column and an HNSW index over inner
product (vectors are unit length); a re-embedding fills a new table while the old one serves,
and dropping a space drops its table. The sparse side is PostgreSQL full-text search: each
chunk's ``tsvector`` holds exactly the tokens the embedded BM25 indexes (``retriever.sparse``:
stemmed English words without stopwords, CJK runs as character bigrams), written as a
``tsvector`` literal so no text-search configuration re-parses them, and ranked by
``ts_rank`` (length-normalised) under a GIN index.

Reads inside ``reading()`` share one REPEATABLE READ snapshot, so a search's dense list, sparse
list and rows come from one committed state. Knows nothing of embedding or fusion.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from retriever.chunking import embedding_text
from retriever.errors import InvalidDocument, RetrieverError
from retriever.sparse import tokenize
from retriever.store import (
    ChunkContext,
    ChunkRow,
    DocumentRow,
    NewChunk,
    Written,
    contains_clause,
    read_metadata,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
SPACE_NAME = re.compile(r"[0-9a-z_]{1,48}")
LOCK_SCHEMA = 7_101  # advisory lock keys (first int): schema set-up, space switch, documents
LOCK_SWITCH = 7_102
LOCK_DOC = 7_103
MAX_POSITION = 16_383  # PostgreSQL's largest tsvector position
MAX_LEXEME_BYTES = 2_046
EF_MAX = 1_000  # pgvector's largest hnsw.ef_search

DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY, version INTEGER NOT NULL, text TEXT NOT NULL, metadata TEXT NOT NULL,
    hash TEXT NOT NULL, created DOUBLE PRECISION NOT NULL, updated DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    id BIGSERIAL PRIMARY KEY, doc_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    ordinal INTEGER NOT NULL, start INTEGER NOT NULL, "end" INTEGER NOT NULL, text TEXT NOT NULL,
    hash TEXT NOT NULL, title TEXT NOT NULL DEFAULT '', section TEXT NOT NULL DEFAULT '',
    tsv TSVECTOR NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks (doc_id);
CREATE INDEX IF NOT EXISTS chunks_tsv ON chunks USING gin (tsv);
CREATE TABLE IF NOT EXISTS spaces (space TEXT PRIMARY KEY, dim INTEGER NOT NULL);
"""


class SpaceChanged(RetrieverError):
    """A write was embedded for a vector space that another process has since switched away
    from; the writer reloads the active space and writes again."""


class DatabaseUnavailable(RetrieverError):
    """The database cannot be reached or is not one this ragtune can use."""


def lexeme(token: str) -> str:
    """``token`` quoted as a tsvector / tsquery lexeme."""
    return "'" + token.replace("\\", "\\\\").replace("'", "''") + "'"


def tsvector_literal(text: str) -> str:
    """The tsvector of ``text``'s BM25 tokens, with their positions."""
    positions: dict[str, list[int]] = {}
    for i, token in enumerate(tokenize(text)):
        if len(token.encode()) <= MAX_LEXEME_BYTES:
            positions.setdefault(token, []).append(min(i + 1, MAX_POSITION))
    return " ".join(
        f"{lexeme(tok)}:{','.join(map(str, sorted(set(pos))[:256]))}"
        for tok, pos in positions.items()
    )


def tsquery_literal(text: str) -> str | None:
    """Any of ``text``'s BM25 tokens, as a tsquery (None when it has none)."""
    tokens = sorted({t for t in tokenize(text) if len(t.encode()) <= MAX_LEXEME_BYTES})
    return " | ".join(lexeme(t) for t in tokens) or None


def _check_nul(value: str, field: str) -> None:
    if "\x00" in value:
        raise InvalidDocument(
            f"{field}: holds a NUL character (U+0000), which PostgreSQL cannot store"
        )


class PgStore:
    """Documents, chunks and vectors in one PostgreSQL schema, through a connection pool."""

    def __init__(self, url: str, schema: str = "ragtune", pool_size: int = 8) -> None:
        if not SCHEMA_NAME.fullmatch(schema):
            raise ValueError(f"database schema: a lowercase SQL name, got {schema!r}")
        from psycopg_pool import ConnectionPool

        self.url, self.schema = url, schema
        self._local = threading.local()
        self._dims: dict[str, int] = {}
        self._bootstrap()
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max(1, pool_size),
            kwargs={"autocommit": True, "options": f"-c search_path={schema},public"},
            configure=_register_vector,
            check=ConnectionPool.check_connection,  # a restarted database: reconnect, not fail
            open=False,
        )
        try:
            self._pool.open(wait=True, timeout=30)
        except Exception as exc:
            raise DatabaseUnavailable(
                f"database: cannot open a pool ({_first_line(exc)})"
            ) from None

    def _bootstrap(self) -> None:
        """Create the extension, the schema and its tables once (under a lock, so replicas
        starting together do not race), and check the schema version."""
        import psycopg

        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise DatabaseUnavailable(f"database: cannot connect ({_first_line(exc)})") from None
        with conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_SCHEMA,))
            try:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            except psycopg.Error as exc:
                raise DatabaseUnavailable(
                    "database: the pgvector extension is not available "
                    f"({_first_line(exc)}); install it, or have an administrator run "
                    "CREATE EXTENSION vector"
                ) from None
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
            conn.execute(f"SET LOCAL search_path = {self.schema}, public")
            conn.execute(DDL)
            row = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta VALUES ('schema', %s)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise ValueError(
                    f"database schema {self.schema} has store schema {row[0]}, this "
                    f"ragtune reads {SCHEMA_VERSION}"
                )

    def close(self) -> None:
        self._pool.close()

    # ---- connections --------------------------------------------------------------------
    @contextlib.contextmanager
    def _conn(self) -> Iterator[Any]:
        """The connection of the snapshot or transaction this thread is in, else a pooled one."""
        pinned = getattr(self._local, "conn", None)
        if pinned is not None:
            yield pinned
            return
        with self._pool.connection() as conn:
            yield conn

    @contextlib.contextmanager
    def _pinned(self, conn: Any) -> Iterator[None]:
        self._local.conn = conn
        try:
            yield
        finally:
            self._local.conn = None

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Every read inside sees one committed state (a REPEATABLE READ, read-only snapshot)."""
        if getattr(self._local, "conn", None) is not None:
            yield
            return
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            with self._pinned(conn):
                yield

    @contextlib.contextmanager
    def switching(self) -> Iterator[None]:
        """One transaction that no write of any process overlaps: the last catch-up of a
        re-embedding and the switch of the active space commit together."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_SWITCH,))
            with self._pinned(conn):
                yield

    # ---- meta ---------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        with self._conn() as c:
            row = c.execute("SELECT value FROM meta WHERE key=%s", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._conn() as c:
            c.execute(
                "INSERT INTO meta VALUES (%s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value=EXCLUDED.value",
                (key, value),
            )

    def notify(self, channel: str, payload: dict[str, Any]) -> None:
        """Send ``payload`` on ``channel``; inside a transaction it goes out at commit."""
        with self._conn() as c:
            c.execute("SELECT pg_notify(%s, %s)", (channel, json.dumps(payload)))

    # ---- documents ----------------------------------------------------------------------
    def document(self, doc_id: str) -> DocumentRow | None:
        with self._conn() as c:
            row = c.execute(
                "SELECT id, version, text, metadata, hash, created, updated FROM documents "
                "WHERE id=%s",
                (doc_id,),
            ).fetchone()
        return _doc(row) if row else None

    def documents(
        self, offset: int = 0, limit: int = 100, contains: str | None = None
    ) -> list[DocumentRow]:
        """A page in id order; with ``contains``, only documents whose id or text holds it
        (case ignored)."""
        where, args = contains_clause(contains, "ILIKE", "%s")
        with self._conn() as c:
            rows = c.execute(
                "SELECT id, version, text, metadata, hash, created, updated FROM documents "
                f'{where} ORDER BY id COLLATE "C" LIMIT %s OFFSET %s',
                (*args, max(0, min(limit, 2**62)), max(0, min(offset, 2**62))),
            ).fetchall()
        return [_doc(r) for r in rows]

    def count_documents(self, contains: str | None = None) -> int:
        where, args = contains_clause(contains, "ILIKE", "%s")
        with self._conn() as c:
            return int(c.execute(f"SELECT count(*) FROM documents {where}", args).fetchone()[0])

    def replace_many(self, docs: Sequence[tuple[DocumentRow, Sequence[NewChunk]]]) -> list[Written]:
        """Write documents and their chunks in one transaction; what each write did. Raises
        ``SpaceChanged`` (writing nothing) when the chunks carry no vector of the active space."""
        tables: dict[str, str] = {}
        for doc, chunks in docs:
            _check_nul(doc.text, "text")
            for space, v in (chunks[0].vectors if chunks else {}).items():
                tables[space] = self._table(space, len(v))
        with self._pool.connection() as conn, conn.transaction(), self._pinned(conn):
            conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (LOCK_SWITCH,))
            active = self.get_meta("space")
            for _, chunks in docs:
                if active and chunks and active not in chunks[0].vectors:
                    raise SpaceChanged(f"the index switched to vector space {active}")
            _lock_documents(conn, [doc.id for doc, _ in docs])
            return [self._replace(conn, doc, chunks, tables) for doc, chunks in docs]

    def _replace(
        self, conn: Any, doc: DocumentRow, chunks: Sequence[NewChunk], tables: dict[str, str]
    ) -> Written:
        removed = _remove_chunks(conn, doc.id)
        metadata = json.dumps(doc.metadata, ensure_ascii=False)
        # the version counts from what is stored now: another process may have written since
        (version,) = conn.execute(
            "INSERT INTO documents VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO "
            "UPDATE SET version=documents.version + 1, text=EXCLUDED.text, "
            "metadata=EXCLUDED.metadata, hash=EXCLUDED.hash, updated=EXCLUDED.updated "
            "RETURNING version",
            (doc.id, 1, doc.text, metadata, doc.hash, doc.created, doc.updated),
        ).fetchone()
        if not chunks:
            return Written(removed, [], int(version))
        ids = [
            int(r[0])
            for r in conn.execute(
                "SELECT nextval(pg_get_serial_sequence('chunks', 'id')) "
                "FROM generate_series(1, %s)",
                (len(chunks),),
            )
        ]
        with conn.cursor() as cur:
            cur.executemany(
                'INSERT INTO chunks (id, doc_id, ordinal, start, "end", text, hash, title, '
                "section, tsv) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::tsvector)",
                [
                    (
                        cid,
                        doc.id,
                        c.ordinal,
                        c.start,
                        c.end,
                        c.text,
                        c.hash,
                        c.title,
                        c.section,
                        _tsv(c.title, c.section, c.text),
                    )
                    for cid, c in zip(ids, chunks, strict=True)
                ],
            )
        for space in chunks[0].vectors:
            table = tables[space]
            with conn.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO {table} VALUES (%s, %s, %s)",
                    [
                        (cid, c.hashes.get(space, c.hash), _vec(c.vectors[space]))
                        for cid, c in zip(ids, chunks, strict=True)
                    ],
                )
        return Written(removed, ids, int(version))

    def delete(self, doc_ids: Sequence[str]) -> list[int]:
        """Delete documents and their chunks in one transaction; the removed chunk ids. If any
        id is unknown, nothing is deleted and ``KeyError(id)`` is raised."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (LOCK_SWITCH,))
            _lock_documents(conn, doc_ids)
            removed: list[int] = []
            for doc_id in doc_ids:
                removed += _remove_chunks(conn, doc_id)
                gone = conn.execute("DELETE FROM documents WHERE id=%s", (doc_id,)).rowcount
                if gone == 0:
                    raise KeyError(doc_id)  # rolls the whole transaction back
        return removed

    # ---- chunks -------------------------------------------------------------------------
    def chunks(self, ids: Sequence[int]) -> dict[int, ChunkRow]:
        if not len(ids):
            return {}
        with self._conn() as c:
            rows = c.execute(
                'SELECT c.id, c.doc_id, c.ordinal, c.start, c."end", c.text, d.metadata, '
                "c.title, c.section FROM chunks c JOIN documents d ON d.id = c.doc_id "
                "WHERE c.id = ANY(%s)",
                ([int(i) for i in ids],),
            ).fetchall()
        return {
            r[0]: ChunkRow(r[0], r[1], r[2], r[3], r[4], r[5], read_metadata(r[6]), r[7], r[8])
            for r in rows
        }

    def chunk_texts(self) -> tuple[list[int], list[str]]:
        with self._conn() as c:
            rows = c.execute("SELECT id, text FROM chunks ORDER BY id").fetchall()
        return [int(r[0]) for r in rows], [r[1] for r in rows]

    def chunk_contexts(self) -> list[ChunkContext]:
        with self._conn() as c:
            rows = c.execute("SELECT id, text, title, section FROM chunks ORDER BY id").fetchall()
        return [ChunkContext(int(r[0]), r[1], r[2], r[3]) for r in rows]

    def chunk_spans(self) -> list[tuple[int, str, int]]:
        with self._conn() as c:
            rows = c.execute(
                'SELECT id, doc_id, start FROM chunks ORDER BY doc_id COLLATE "C", id'
            ).fetchall()
        return [(int(r[0]), r[1], int(r[2])) for r in rows]

    def set_contexts(self, rows: Sequence[tuple[int, str, str]]) -> None:
        """Set (chunk id, title, section) of existing chunks, and their tsvector with them."""
        if not rows:
            return
        with self._pool.connection() as conn, conn.transaction():
            texts = dict(
                conn.execute(
                    "SELECT id, text FROM chunks WHERE id = ANY(%s)", ([r[0] for r in rows],)
                ).fetchall()
            )
            with conn.cursor() as cur:
                cur.executemany(
                    "UPDATE chunks SET title=%s, section=%s, tsv=%s::tsvector WHERE id=%s",
                    [
                        (
                            title,
                            section,
                            _tsv(title, section, texts[cid]),
                            cid,
                        )
                        for cid, title, section in rows
                        if cid in texts
                    ],
                )

    def live_ids(self) -> np.ndarray:
        with self._conn() as c:
            rows = c.execute("SELECT id FROM chunks ORDER BY id").fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def count_chunks(self) -> int:
        with self._conn() as c:
            return int(c.execute("SELECT count(*) FROM chunks").fetchone()[0])

    # ---- vectors ------------------------------------------------------------------------
    def _dim(self, space: str) -> int | None:
        if space not in self._dims:
            with self._conn() as c:
                row = c.execute("SELECT dim FROM spaces WHERE space=%s", (space,)).fetchone()
            if row is None:
                return None
            self._dims[space] = int(row[0])
        return self._dims[space]

    def _table(self, space: str, dim: int) -> str:
        """The vector table of ``space``, created (with its HNSW index) when new. Created on a
        connection of its own, before the caller's write: a table created inside a write that
        holds locks on ``chunks`` could deadlock with another process creating it."""
        if not SPACE_NAME.fullmatch(space):
            raise ValueError(f"vector space: a short lowercase name, got {space!r}")
        have = self._dim(space)
        if have is None:
            with self._pool.connection() as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_SCHEMA,))
                row = conn.execute("SELECT dim FROM spaces WHERE space=%s", (space,)).fetchone()
                if row is None:
                    conn.execute(
                        f"CREATE TABLE vec_{space} (chunk_id BIGINT PRIMARY KEY REFERENCES "
                        f"chunks(id) ON DELETE CASCADE, hash TEXT NOT NULL, "
                        f"embedding vector({int(dim)}) NOT NULL)"
                    )
                    conn.execute(f"CREATE INDEX vec_{space}_hash ON vec_{space} (hash)")
                    conn.execute(
                        f"CREATE INDEX vec_{space}_hnsw ON vec_{space} "
                        "USING hnsw (embedding vector_ip_ops)"
                    )
                    conn.execute("INSERT INTO spaces VALUES (%s, %s)", (space, int(dim)))
                    have = int(dim)
                else:
                    have = int(row[0])
            self._dims[space] = have
        if have != dim:
            raise ValueError(f"vector space {space} holds {have}-d vectors, not {dim}-d")
        return f"vec_{space}"

    def vectors_by_hash(self, space: str, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        if not hashes or self._dim(space) is None:
            return {}
        with self._conn() as c:
            rows = c.execute(
                f"SELECT hash, embedding FROM vec_{space} WHERE hash = ANY(%s)", (list(hashes),)
            ).fetchall()
        return {h: _array(v) for h, v in rows}

    def vectors(
        self, space: str, ids: Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) in ``space`` for live chunks (all, or those in ``ids``), id order."""
        empty = np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.float32)
        if self._dim(space) is None or (ids is not None and not len(ids)):
            return empty
        sql, args = f"SELECT chunk_id, embedding FROM vec_{space}", []
        if ids is not None:
            sql, args = sql + " WHERE chunk_id = ANY(%s)", [[int(i) for i in ids]]
        with self._conn() as c:
            rows = c.execute(sql + " ORDER BY chunk_id", args).fetchall()
        if not rows:
            return empty
        return (
            np.array([r[0] for r in rows], dtype=np.int64),
            np.vstack([_array(r[1]) for r in rows]),
        )

    def missing_vectors(self, space: str, limit: int) -> list[ChunkContext]:
        """Up to ``limit`` live chunks with no vector in ``space``, with their context."""
        sql = "SELECT c.id, c.text, c.title, c.section FROM chunks c"
        if self._dim(space) is not None:
            sql += f" WHERE NOT EXISTS (SELECT 1 FROM vec_{space} v WHERE v.chunk_id = c.id)"
        with self._conn() as c:
            rows = c.execute(sql + " ORDER BY c.id LIMIT %s", (limit,)).fetchall()
        return [ChunkContext(int(r[0]), r[1], r[2], r[3]) for r in rows]

    def put_vectors(self, space: str, rows: Sequence[tuple[int, str, np.ndarray]]) -> None:
        """Store vectors for chunks that still exist (a chunk deleted meanwhile is skipped)."""
        if not rows:
            return
        import psycopg

        table = self._table(space, len(rows[0][2]))
        for attempt in range(3):
            try:
                with self._conn() as conn, conn.transaction(), conn.cursor() as cur:
                    cur.executemany(
                        f"INSERT INTO {table} SELECT %s, %s, %s WHERE EXISTS (SELECT 1 "
                        "FROM chunks WHERE id=%s) ON CONFLICT (chunk_id) DO UPDATE SET "
                        "hash=EXCLUDED.hash, embedding=EXCLUDED.embedding",
                        [(cid, h, _vec(v), cid) for cid, h, v in rows],
                    )
                return
            except psycopg.errors.ForeignKeyViolation:
                if attempt == 2:
                    raise  # a chunk deleted between the check and the insert: try again

    def drop_spaces(self, keep: Sequence[str]) -> int:
        """Drop the vector tables of every space not in ``keep``; how many vectors went."""
        dropped = 0
        with self._conn() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_SCHEMA,))
            for (space,) in conn.execute("SELECT space FROM spaces").fetchall():
                if space in keep:
                    continue
                dropped += int(conn.execute(f"SELECT count(*) FROM vec_{space}").fetchone()[0])
                conn.execute(f"DROP TABLE vec_{space}")
                conn.execute("DELETE FROM spaces WHERE space=%s", (space,))
                self._dims.pop(space, None)
        return dropped

    def spaces(self) -> list[str]:
        with self._conn() as c:
            return [r[0] for r in c.execute("SELECT space FROM spaces ORDER BY space")]

    def count_vectors(self, space: str) -> int:
        if self._dim(space) is None:
            return 0
        with self._conn() as c:
            return int(c.execute(f"SELECT count(*) FROM vec_{space}").fetchone()[0])

    # ---- search -------------------------------------------------------------------------
    def dense_search(
        self, space: str, query: np.ndarray, k: int, exact: bool = False, ef: int = 100
    ) -> list[tuple[int, float]]:
        """The ``k`` chunks of ``space`` nearest ``query`` by inner product: by the HNSW index
        (``ef`` candidates, at least ``k``), or by a full scan when ``exact``."""
        if self._dim(space) is None:
            return []
        q = _vec(query)
        with self._conn() as conn, conn.transaction():
            if exact:
                conn.execute("SELECT set_config('enable_indexscan', 'off', true)")
            else:
                conn.execute(
                    "SELECT set_config('hnsw.ef_search', %s, true)", (str(min(max(ef, k), EF_MAX)),)
                )
            rows = conn.execute(
                f"SELECT chunk_id, embedding <#> %s AS d FROM vec_{space} ORDER BY d LIMIT %s",
                (q, k),
            ).fetchall()
            if exact:
                conn.execute("SELECT set_config('enable_indexscan', 'on', true)")
        return [(int(cid), -float(d)) for cid, d in rows]

    def sparse_search(self, query: str, k: int) -> list[tuple[int, float]]:
        """The ``k`` chunks whose tsvector best matches any of ``query``'s tokens."""
        tsq = tsquery_literal(query)
        if tsq is None:
            return []
        with self._conn() as c:
            rows = c.execute(
                "SELECT id, ts_rank(tsv, q, 1) AS r FROM chunks, CAST(%s AS tsquery) q "
                "WHERE tsv @@ q ORDER BY r DESC, id LIMIT %s",
                (tsq, k),
            ).fetchall()
        return [(int(cid), float(r)) for cid, r in rows if r > 0]


def _lock_documents(conn: Any, doc_ids: Sequence[str]) -> None:
    """Hold each document's write lock until the transaction ends (in id order: no deadlock
    between two writers of the same documents)."""
    for doc_id in sorted(set(doc_ids)):
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_DOC, doc_id))


def _remove_chunks(conn: Any, doc_id: str) -> list[int]:
    """Delete a document's chunks (their vectors go by cascade); their ids."""
    return [
        int(r[0])
        for r in conn.execute("DELETE FROM chunks WHERE doc_id=%s RETURNING id", (doc_id,))
    ]


def _tsv(title: str, section: str, text: str) -> str:
    """A chunk's tsvector: its text with its context, as the embedded BM25 reads it."""
    return tsvector_literal(embedding_text(title, section, text))


def _register_vector(conn: Any) -> None:
    from pgvector.psycopg import register_vector

    register_vector(conn)


def _array(v: Any) -> np.ndarray:
    """A stored vector as float32: pgvector's ``Vector`` (0.4 and newer) or an array (older)."""
    return np.asarray(v.to_numpy() if hasattr(v, "to_numpy") else v, dtype=np.float32)


def _vec(v: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(v, dtype=np.float32)


def _doc(row: tuple) -> DocumentRow:
    return DocumentRow(row[0], row[1], row[2], read_metadata(row[3]), row[4], row[5], row[6])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

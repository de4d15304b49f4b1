"""The live retriever over PostgreSQL + pgvector: the same ``Retriever``, state in a database.

``PgRetriever`` is ``retriever.index.Retriever`` with ``retriever.pgstore.PgStore`` as its
store and the database itself as its dense and sparse views: there is no FAISS index, no BM25
in memory, no snapshot and no folder lock, so any number of processes open the same index and a
write committed by one is seen by the next search of every other. What a process still holds is
which vector space is active and the embedder for it; ``refresh()`` re-reads both (the service
calls it when another process's switch is announced over ``LISTEN/NOTIFY``, and a write that
finds the space switched under it refreshes and writes again).

Knows nothing of HTTP, settings or how an embedder is found: ``embedder_for`` is handed in.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from retriever.config import RetrieverConfig
from retriever.index import TEXT_KEY, DocumentIn, EmbedderLike, Retriever, WriteResult
from retriever.pgstore import PgStore, SpaceChanged

log = logging.getLogger(__name__)
CHANNEL = "ragtune_index"  # NOTIFY channel (+ _schema): {"event": "switch", "space": ...}


class PgVectors:
    """The dense view of one vector space: the space's table, searched in SQL. Writes go to
    the table in the store's own transaction, so ``add`` and ``remove`` have nothing to do."""

    def __init__(self, store: PgStore, space: str, dim: int, exact: bool, ef_search: int) -> None:
        self.store, self.space, self.dim = store, space, dim
        self.exact, self.ef_search = exact, ef_search

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Already stored by the write's transaction."""

    def remove(self, ids: np.ndarray) -> None:
        """Already removed by the write's transaction (the vectors cascade with their chunks)."""

    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        return self.store.dense_search(self.space, query, k, self.exact, self.ef_search)

    def ids(self) -> np.ndarray:
        return self.store.vectors(self.space)[0]

    def __len__(self) -> int:
        return self.store.count_vectors(self.space)


class PgSparse:
    """The sparse view: PostgreSQL full-text search over the chunks' stored tsvectors."""

    rebuilds = 0  # nothing is ever rebuilt in memory

    def __init__(self, store: PgStore) -> None:
        self.store = store

    def apply(self, removed: list[int], added: list[int], texts: list[str]) -> None:
        """Already written with the chunks."""

    def invalidate(self) -> None:
        """Nothing is cached."""

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        return self.store.sparse_search(query, k)


class PgRetriever(Retriever):
    """Documents, chunks and vectors in PostgreSQL; dense search by pgvector (HNSW, or exact
    when ``exact``), sparse by full-text search, fused per query as the embedded retriever."""

    def __init__(
        self,
        url: str,
        embedder: EmbedderLike,
        config: RetrieverConfig | None = None,
        *,
        schema: str = "ragtune",
        pool_size: int = 8,
        exact: bool = False,
        ef_search: int = 100,
        embedder_for: Callable[[dict[str, Any]], EmbedderLike] | None = None,
    ) -> None:
        self.config = config or RetrieverConfig()
        self.url, self.schema = url, schema
        self.exact, self.ef_search = exact, ef_search
        self._embedder_for = embedder_for
        self.store = PgStore(url, schema, pool_size)
        self.channel = f"{CHANNEL}_{schema}"
        self._closed = threading.Event()
        try:
            self._open(self._stored_tuned(embedder), PgSparse(self.store))
        except BaseException:
            self.store.close()
            raise
        self._follower = threading.Thread(target=self._follow, name=f"follow-{schema}", daemon=True)
        self._follower.start()

    def _stored_tuned(self, embedder: EmbedderLike) -> EmbedderLike:
        """The fine-tuned version of ``embedder`` the index was switched to, when it was."""
        stored = json.loads(self.store.get_meta("embedder") or "null")
        name = embedder.identity.get("name")
        if self._embedder_for and stored and stored.get("adapter") and stored.get("name") == name:
            return self._embedder_for(stored)
        return embedder

    def _follow(self) -> None:
        """LISTEN for other processes' switches and take each up at once; reconnects after a
        lost connection (a restarted database), checking for a switch missed meanwhile."""
        import psycopg

        while not self._closed.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {self.channel}")
                    self.refresh()  # a switch made while this process was not listening
                    while not self._closed.is_set():
                        for _ in conn.notifies(timeout=0.5, stop_after=1):
                            self.refresh()
            except Exception as exc:  # noqa: BLE001 - any loss of the link: listen again
                if self._closed.is_set():
                    return
                log.warning("index notifications lost (%s); listening again", exc)
                self._closed.wait(1.0)

    @property
    def location(self) -> str:
        return f"database schema {self.schema}"

    def _load_index(self) -> tuple[Any, int]:
        return self._view(self.space, self.embedder.dim), 0

    def _rebuilt_index(self, space: str, dim: int) -> Any:
        return self._view(space, dim)

    def _view(self, space: str, dim: int) -> PgVectors:
        return PgVectors(self.store, space, dim, self.exact, self.ef_search)

    @property
    def chunk_count(self) -> int:
        return self.store.count_chunks()

    def close(self) -> None:
        self._closed.set()
        follower = getattr(self, "_follower", None)  # none yet when opening failed
        if follower is not None:
            follower.join(timeout=5)
        self.store.close()

    def snapshot(self) -> None:
        """Nothing to write: the database is the index."""

    def _maybe_snapshot(self) -> None:
        """Nothing to write: the database is the index."""

    # ---- writes -------------------------------------------------------------------------
    def upsert_many(self, docs: Sequence[DocumentIn]) -> list[WriteResult]:
        """As ``Retriever.upsert_many``; a write embedded for a space another process has
        switched away from reloads the active space and is written again."""
        try:
            return super().upsert_many(docs)
        except SpaceChanged:
            self.refresh()
            return super().upsert_many(docs)

    def _switch(self, embedder: EmbedderLike, new_space: str) -> dict[str, Any]:
        """The last catch-up and the switch in one transaction no writer overlaps, announced
        to every process at its commit."""
        with self.store.switching():
            result = super()._switch(embedder, new_space)
            self.store.notify(self.channel, {"event": "switch", "space": new_space})
        return result

    # ---- other processes' changes -------------------------------------------------------
    def refresh(self) -> bool:
        """Take up the active space another process switched to (loading its embedder with
        ``embedder_for``); whether anything changed."""
        space = self.store.get_meta("space")
        if not space or space == self.space:
            return False
        identity = json.loads(self.store.get_meta("embedder") or "{}")
        if self._embedder_for is None:
            log.warning("the index switched to space %s; reopen it to follow", space)
            return False
        embedder = self._embedder_for(identity)
        with self._write_lock, self._lock.write():
            if self.store.get_meta("space") != space or space == self.space:
                return False  # switched again meanwhile, or by this process itself
            dim = embedder.dim
            self.embedder, self.space = embedder, space
            self.text_version = int(self.store.get_meta(TEXT_KEY) or 1)
            self._index, self._fitted = self._view(space, dim), None
        log.info("following the index's switch to vector space %s (%s)", space, identity)
        return True

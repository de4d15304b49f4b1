"""The index backends every retriever contract test runs against: the embedded SQLite + FAISS
index in a temp folder, and PostgreSQL + pgvector on a real server from the ``pgserver``
package (started once per test process, on a unix socket in a temp dir; no Docker)."""

from __future__ import annotations

import atexit
import shutil
import tempfile
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any

from retriever.config import RetrieverConfig
from retriever.index import Retriever

BACKENDS = ("sqlite", "postgres")


@lru_cache(maxsize=1)
def pg_url() -> str:
    """The URL of this test process's PostgreSQL, started at its first use."""
    import pgserver

    folder = Path(tempfile.mkdtemp(prefix="ragtune-pg-"))
    server = pgserver.get_server(folder, cleanup_mode="stop")

    def stop() -> None:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)

    atexit.register(stop)
    return str(server.get_uri())


def new_schema() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


class IndexPlace:
    """Where one test's index lives in one backend; ``open`` opens it (again, for a reopen)."""

    def __init__(self, backend: str, folder: Path) -> None:
        self.backend, self.folder = backend, folder
        self.schema = new_schema()

    def open(self, embedder: Any, config: RetrieverConfig | None = None, **kw: Any) -> Retriever:
        if self.backend == "sqlite":
            return Retriever(self.folder, embedder, config)
        from retriever.postgres import PgRetriever

        return PgRetriever(pg_url(), embedder, config, schema=self.schema, **kw)

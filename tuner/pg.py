"""Where the tuner's shared state lives when it is not the data dir: a PostgreSQL database.

With ``database.url`` set, several ``ragtune serve`` replicas share one cluster state: the job
queue and eval runs (``tuner.pgjobs``) and the adapter registry's records (``tuner.pgregistry``)
live in tables of the settings' schema, beside the index's (``retriever.pgstore``). The
service hands a ``Database`` to what it builds; the processes it starts (training and eval
workers) find it in their environment under the settings' own names,
``RAGTUNE_DATABASE__URL`` and ``RAGTUNE_DATABASE__SCHEMA_NAME`` (``Database.env`` /
``from_env``), so a worker, ``ragtune tune`` or ``ragtune adapters`` started by hand with them
set sees the same state.

Knows nothing of settings files, HTTP or what the tables hold.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

URL_ENV = "RAGTUNE_DATABASE__URL"
SCHEMA_ENV = "RAGTUNE_DATABASE__SCHEMA_NAME"
SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
NOW = "extract(epoch from clock_timestamp())"  # the database's clock: one for every replica


@dataclass(frozen=True)
class Database:
    url: str
    schema: str = "ragtune"

    def __post_init__(self) -> None:
        if not SCHEMA_NAME.fullmatch(self.schema):
            raise ValueError(f"database schema: a lowercase SQL name, got {self.schema!r}")

    @classmethod
    def from_env(cls) -> Database | None:
        url = os.environ.get(URL_ENV)
        return cls(url, os.environ.get(SCHEMA_ENV) or "ragtune") if url else None

    def env(self) -> dict[str, str]:
        """What a child process needs in its environment to find this database."""
        return {URL_ENV: self.url, SCHEMA_ENV: self.schema}

    def pool(self, max_size: int = 4) -> Any:
        """An open psycopg pool on this schema (autocommit; connections checked when taken, so
        a restarted database costs one reconnect, not a failed call)."""
        from psycopg_pool import ConnectionPool

        pool = ConnectionPool(
            self.url,
            min_size=1,
            max_size=max_size,
            kwargs={"autocommit": True, "options": f"-c search_path={self.schema},public"},
            check=ConnectionPool.check_connection,
            open=False,
        )
        pool.open(wait=True, timeout=30)
        return pool

    def create(self, ddl: str, lock: int) -> None:
        """Create the schema and ``ddl``'s tables once, under advisory lock ``lock`` (replicas
        starting together do not race)."""
        import psycopg

        with (
            psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn,
            conn.transaction(),
        ):
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
            conn.execute(f"SET LOCAL search_path = {self.schema}, public")
            conn.execute(ddl)


@contextlib.contextmanager
def transaction(pool: Any) -> Iterator[Any]:
    """A pooled connection inside one transaction."""
    with pool.connection() as conn, conn.transaction():
        yield conn

"""The adapter registry with its records in PostgreSQL, for replicas over one data dir.

``PgRegistry`` is ``tuner.registry.Registry`` with its bookkeeping moved into the database:
each adapter's record (table ``adapters``), the promoted pointer (``registry_promoted``) and the
highest version each name had (``adapter_versions``); every change holds one transaction-level
advisory lock instead of the file lock. The weights stay in the adapter's folder under the
shared data dir, written exactly as ``Registry.save`` writes them (built in a temp folder,
fsynced, renamed into place), because PEFT loads an adapter from a folder and a LoRA's
megabytes do not belong in the rows every listing reads; ``ragtune.json`` is still written
beside them as a copy, so a folder stays self-describing for backups and for a move back to
an embedded setup.

A promotion (or demotion, or deleting the promoted adapter) is announced at commit with
``NOTIFY ragtune_registry_<schema>``. ``RegistryFollower`` LISTENs: it keeps the promoted id
that every request reads (``PgRegistry.promoted`` asks it instead of the database when one
runs in the process) and calls back, so a replica can load the newly promoted adapter before
its first request needs it. It reconnects after a lost link and re-reads what it missed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from tuner.pg import Database
from tuner.record import Record
from tuner.registry import Registry

log = logging.getLogger(__name__)

CHANNEL = "ragtune_registry"  # + _<schema>; payload {"promoted": id | null}
LOCK_DDL, LOCK_REGISTRY = 7_301, 7_302
DDL = """
CREATE TABLE IF NOT EXISTS adapters (id TEXT PRIMARY KEY, record JSONB NOT NULL);
CREATE TABLE IF NOT EXISTS adapter_versions (name TEXT PRIMARY KEY, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS registry_promoted (
    one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one), id TEXT NOT NULL, body JSONB NOT NULL);
"""
_pools: dict[Database, Any] = {}
_followers: dict[Database, RegistryFollower] = {}
_pools_lock = threading.Lock()


def _pool(database: Database) -> Any:
    """One pool per database for the process (registries are built per request)."""
    with _pools_lock:
        if database not in _pools:
            database.create(DDL, LOCK_DDL)
            _pools[database] = database.pool()
        return _pools[database]


def channel(database: Database) -> str:
    return f"{CHANNEL}_{database.schema}"


class PgRegistry(Registry):
    """Adapter folders under ``root``; their records, versions and promotion in ``database``."""

    def __init__(self, root: Path, database: Database, lock_timeout: float = 60.0) -> None:
        super().__init__(root, lock_timeout)
        self.database = database
        self._pool = _pool(database)
        self._local = threading.local()

    @contextlib.contextmanager
    def _conn(self) -> Iterator[Any]:
        held = getattr(self._local, "conn", None)
        if held is not None:
            yield held
            return
        with self._pool.connection() as conn:
            yield conn

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:  # type: ignore[override]
        """One transaction, holding the registry's advisory lock: changes commit together."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._pool.connection() as conn, conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = '{int(self.lock_timeout * 1000)}ms'")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_REGISTRY,))
            self._local.conn = conn
            try:
                yield
            finally:
                self._local.conn = None

    # ---- records ----------------------------------------------------------------------------
    def _record_body(self, path: Path) -> Any:
        with self._conn() as conn:
            row = conn.execute("SELECT record FROM adapters WHERE id = %s", (path.name,))
            found = row.fetchone()
        if found is not None:
            return found[0]
        return super()._record_body(path)  # saved before this registry had a database

    def _keep(self, record: Record) -> None:
        body = record.to_json()
        with self._conn() as conn:
            conn.execute(
                "INSERT INTO adapters VALUES (%s, %s) ON CONFLICT (id) DO UPDATE"
                " SET record = EXCLUDED.record",
                (record.id, json.dumps(body)),
            )

    def _forget(self, adapter_id: str) -> None:
        with self._conn() as conn:
            conn.execute("DELETE FROM adapters WHERE id = %s", (adapter_id,))

    def _versions(self) -> dict[str, int]:
        with self._conn() as conn:
            rows = conn.execute("SELECT name, version FROM adapter_versions").fetchall()
        return {str(name): int(version) for name, version in rows}

    def _remember_version(self, name: str, version: int) -> None:
        with self._conn() as conn:
            conn.execute(
                "INSERT INTO adapter_versions VALUES (%s, %s) ON CONFLICT (name) DO UPDATE"
                " SET version = GREATEST(adapter_versions.version, EXCLUDED.version)",
                (name, version),
            )

    # ---- promotion ----------------------------------------------------------------------------
    def _promoted_id(self) -> str | None:
        """The follower's cached id for reads; the database's under the lock (a change decides
        on what is committed, never on a notification not yet heard)."""
        follower = _followers.get(self.database)
        changing = getattr(self._local, "conn", None) is not None
        if follower is not None and follower.listening and not changing:
            return follower.promoted
        return self.promoted_in_database()

    def promoted_in_database(self) -> str | None:
        with self._conn() as conn:
            row = conn.execute("SELECT id FROM registry_promoted").fetchone()
        return str(row[0]) if row else None

    def _set_promoted(self, body: Mapping[str, Any] | None) -> None:
        with self._conn() as conn:
            if body is None:
                conn.execute("DELETE FROM registry_promoted")
            else:
                conn.execute(
                    "INSERT INTO registry_promoted (one, id, body) VALUES (true, %s, %s)"
                    " ON CONFLICT (one) DO UPDATE SET id = EXCLUDED.id, body = EXCLUDED.body",
                    (body["id"], json.dumps(dict(body))),
                )
            payload = {"promoted": None if body is None else body["id"]}
            conn.execute("SELECT pg_notify(%s, %s)", (channel(self.database), json.dumps(payload)))

    def adopt_folders(self) -> int:
        """Copy into the database the records of folders that have only their ``ragtune.json``
        (a data dir that was used without a database); how many were added."""
        added = 0
        with self._lock():
            for record in self.list():
                if not record.tracked:
                    continue
                with self._conn() as conn:
                    row = conn.execute("SELECT 1 FROM adapters WHERE id = %s", (record.id,))
                    if row.fetchone() is None:
                        self._keep(record)
                        added += 1
        return added


class RegistryFollower:
    """LISTENs for promotions in ``database`` and keeps the promoted id for this process;
    ``on_promote(adapter_id | None)`` is called (in its thread) for each one it hears."""

    def __init__(
        self, database: Database, on_promote: Callable[[str | None], None] | None = None
    ) -> None:
        self.database, self.on_promote = database, on_promote
        self.promoted: str | None = None
        self.listening = False
        self._closed = threading.Event()
        self._ready = threading.Event()
        _pool(database)  # the tables exist before anyone listens
        self._thread = threading.Thread(target=self._follow, name="registry-follow", daemon=True)

    def start(self, timeout: float = 10.0) -> RegistryFollower:
        _followers[self.database] = self
        self._thread.start()
        self._ready.wait(timeout)
        return self

    def close(self) -> None:
        self._closed.set()
        if _followers.get(self.database) is self:
            del _followers[self.database]
        self._thread.join(timeout=5)

    def _changed(self, promoted: str | None) -> None:
        if promoted == self.promoted:
            return
        self.promoted = promoted
        log.info("registry: the promoted adapter is now %s", promoted or "none")
        if self.on_promote is not None:  # in a thread: a slow load never delays what is heard
            threading.Thread(target=self._call_back, args=(promoted,), daemon=True).start()

    def _call_back(self, promoted: str | None) -> None:
        assert self.on_promote is not None
        try:
            self.on_promote(promoted)
        except Exception:  # noqa: BLE001 - a failed warm-up leaves loading to the request
            log.exception("registry: after promoting %s", promoted)

    def _follow(self) -> None:
        import psycopg

        registry = PgRegistry(Path("."), self.database)
        while not self._closed.is_set():
            try:
                with psycopg.connect(self.database.url, autocommit=True, connect_timeout=5) as c:
                    c.execute(f"LISTEN {channel(self.database)}")
                    self._changed(registry.promoted_in_database())  # what was missed meanwhile
                    self.listening = True
                    self._ready.set()
                    while not self._closed.is_set():
                        for note in c.notifies(timeout=0.5, stop_after=1):
                            self._changed(json.loads(note.payload).get("promoted"))
            except Exception as exc:  # noqa: BLE001 - any loss of the link: listen again
                self.listening = False
                if self._closed.is_set():
                    return
                log.warning("registry notifications lost (%s); listening again", exc)
                self._closed.wait(1.0)
        self.listening = False


def open_registry(root: Path, database: Any = None) -> Registry:
    """The registry at ``root``: its records in ``database`` (a ``tuner.pg.Database``) when
    one is given or the environment names one (``Database.from_env``), else beside the weights."""
    database = database or Database.from_env()
    return Registry(root) if database is None else PgRegistry(root, database)

"""The job store in PostgreSQL: one queue for every replica, each job claimed by exactly one.

The same calls as ``tuner.jobstore.JobStore`` (the SQLite one), over table ``jobs`` of the
database's schema, where ``kind`` is the runner's folder (``jobs`` for training, ``evals`` for
eval runs), plus what a cluster needs:

- ``claim(owner)`` takes the oldest queued job with ``SELECT … FOR UPDATE SKIP LOCKED``: two
  replicas asking at once get different jobs, or one gets none; ``attempts`` counts the claims.
- The claiming replica holds a lease (``lease_until``, on the database's clock; ``lease_s``,
  default ``LEASE_S``) that it renews every quarter of that for every job it owns
  (``renew``), validating or running. A replica
  that dies stops renewing; ``expire`` then puts its running jobs back in the queue (a training
  job resumes from its last checkpoint in the shared job folder) and ``adopt`` hands its
  validating ones to the replica that asks.
- A store opened with ``attempt=N`` is *fenced*: its writes (progress, beats, the outcome)
  land only while the job is still on claim N, so a worker whose claim expired can neither
  move the job nor finish it; ``beat`` answers whether the claim still holds, and the worker
  stops when it does not (``tuner.jobstore.start_heartbeat``).
"""

from __future__ import annotations

import builtins
import json
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tuner.jobstore import (
    ATTEMPT_ENV,
    FINISHED,
    Job,
    JobFinished,
    JobNotFound,
    JobSpec,
    JobStore,
    _job,
    client_error,
)
from tuner.pg import NOW, Database

LEASE_S = 12.0  # a replica silent this long has lost its jobs
LEASE_ENV = "RAGTUNE_JOB_LEASE_S"  # the runner's lease, for its fenced workers
LOCK_DDL = 7_201

DDL = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL, method TEXT NOT NULL,
    recipe TEXT NOT NULL, state TEXT NOT NULL, step INTEGER NOT NULL DEFAULT 0, total INTEGER,
    rate_t0 DOUBLE PRECISION, rate_s0 INTEGER, progress_at DOUBLE PRECISION, error TEXT,
    problems TEXT NOT NULL DEFAULT '[]', adapter TEXT, pid INTEGER, heartbeat DOUBLE PRECISION,
    cancel_requested BOOLEAN NOT NULL DEFAULT false, cancel_at DOUBLE PRECISION,
    attempts INTEGER NOT NULL DEFAULT 0, owner TEXT, lease_until DOUBLE PRECISION,
    created DOUBLE PRECISION NOT NULL, started DOUBLE PRECISION, finished DOUBLE PRECISION);
CREATE INDEX IF NOT EXISTS jobs_kind_state ON jobs (kind, state, created);
CREATE TABLE IF NOT EXISTS job_points (
    job TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE, step INTEGER NOT NULL,
    loss DOUBLE PRECISION, val_loss DOUBLE PRECISION, PRIMARY KEY (job, step));
CREATE TABLE IF NOT EXISTS job_claims (
    job TEXT NOT NULL, attempt INTEGER NOT NULL, owner TEXT NOT NULL,
    claimed DOUBLE PRECISION NOT NULL, PRIMARY KEY (job, attempt));
"""
UNFINISHED = "state NOT IN ('succeeded', 'failed', 'cancelled')"


class PgJobStore:
    """Jobs of one ``kind`` in PostgreSQL, shared by every replica and its workers."""

    def __init__(
        self,
        database: Database,
        kind: str,
        root: Path | None = None,
        *,
        attempt: int | None = None,
        lease_s: float = LEASE_S,
        pool: Any = None,
    ) -> None:
        self.database, self.kind, self.root, self.attempt = database, kind, root, attempt
        self.lease_s = lease_s
        if pool is None:
            database.create(DDL, LOCK_DDL)
            pool = database.pool()
        self._pool = pool

    def fenced(self, attempt: int) -> PgJobStore:
        """This store, writing only while the job is on claim ``attempt``."""
        return PgJobStore(
            self.database,
            self.kind,
            self.root,
            attempt=attempt,
            lease_s=self.lease_s,
            pool=self._pool,
        )

    def close(self) -> None:
        self._pool.close()

    # ---- plumbing -------------------------------------------------------------------------
    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        from psycopg.rows import dict_row

        with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []

    def _set(self, job_id: str, where: str = "", **values: Any) -> bool:
        cols = ", ".join(f"{k} = %s" for k in values)
        fence, args = self._fence()
        sql = f"UPDATE jobs SET {cols} WHERE id = %s {fence}" + (f" AND {where}" if where else "")
        with self._pool.connection() as conn:
            return int(conn.execute(sql, [*values.values(), job_id, *args]).rowcount) > 0

    def _fence(self) -> tuple[str, list[Any]]:
        if self.attempt is None:
            return "", []
        return "AND attempts = %s AND state = 'running'", [self.attempt]  # this claim, still on

    # ---- the JobStore calls ---------------------------------------------------------------
    def create(self, recipe: JobSpec, owner: str | None = None) -> str:
        """A new job, validating, on ``owner``'s lease (the replica that validates it)."""
        job_id = f"job-{secrets.token_hex(8)}"
        with self._pool.connection() as conn:
            conn.execute(
                "INSERT INTO jobs (id, kind, name, method, recipe, state, owner, lease_until,"
                f" created) VALUES (%s, %s, %s, %s, %s, 'validating', %s, {NOW} + %s, {NOW})",
                (
                    job_id,
                    self.kind,
                    recipe.name,
                    recipe.method,
                    json.dumps(recipe.to_dict()),
                    owner,
                    self.lease_s,
                ),
            )
        return job_id

    def get(self, job_id: str) -> Job:
        rows = self._rows("SELECT * FROM jobs WHERE id = %s AND kind = %s", (job_id, self.kind))
        if not rows:
            raise JobNotFound(job_id)
        points = self._rows(
            "SELECT step, loss, val_loss FROM job_points WHERE job = %s ORDER BY step", (job_id,)
        )
        return _job(rows[0], points, self.root)

    def list(self) -> list[Job]:
        rows = self._rows("SELECT * FROM jobs WHERE kind = %s ORDER BY created DESC", (self.kind,))
        return [_job(r, [], self.root) for r in rows]

    def ids_in(self, *states: str) -> builtins.list[str]:
        rows = self._rows(
            "SELECT id FROM jobs WHERE kind = %s AND state = ANY(%s) ORDER BY created",
            (self.kind, list(states)),
        )
        return [r["id"] for r in rows]

    def queued(self, job_id: str, owner: str | None = None) -> bool:
        """Validated: into the queue, when ``owner`` (if given) still validates it."""
        where = "state = 'validating'" + (" AND owner = %s" if owner else "")
        cols, args = "state = 'queued', owner = NULL", [job_id, *([owner] if owner else [])]
        with self._pool.connection() as conn:
            sql = f"UPDATE jobs SET {cols} WHERE id = %s AND {where}"
            return int(conn.execute(sql, args).rowcount) > 0

    def requeue(self, job_id: str) -> bool:
        """A running job back to the queue (its worker is gone); it resumes from a checkpoint."""
        return self._set(job_id, "state = 'running'", state="queued", pid=None, owner=None)

    def finish(
        self,
        job_id: str,
        state: str,
        *,
        error: str | None = None,
        problems: Sequence[tuple[int, str]] = (),
        adapter: str | None = None,
        owner: str | None = None,
    ) -> bool:
        """The job's outcome (fenced to this store's claim; to ``owner``'s validation when
        given)."""
        if state not in FINISHED:
            raise ValueError(f"state: one of {FINISHED}, got {state!r}")
        fence, args = self._fence()
        if owner is not None:
            fence, args = fence + " AND owner = %s", [*args, owner]
        with self._pool.connection() as conn:
            return (
                int(
                    conn.execute(
                        f"UPDATE jobs SET state = %s, error = %s, problems = %s, adapter = %s,"
                        f" finished = {NOW}, owner = NULL WHERE id = %s {fence} AND {UNFINISHED}",
                        (
                            state,
                            client_error(error, self.root),
                            json.dumps([list(p) for p in problems]),
                            adapter,
                            job_id,
                            *args,
                        ),
                    ).rowcount
                )
                > 0
            )

    def cancel(self, job_id: str) -> Job:
        """Validating or queued: cancelled now. Running: flag it for its worker."""
        job = self.get(job_id)
        if job.state in FINISHED:
            raise JobFinished(f"job {job_id} already {job.state}")
        waiting = "state IN ('validating', 'queued')"
        with self._pool.connection() as conn:  # one statement: no expire or claim in between
            conn.execute(
                f"UPDATE jobs SET state = CASE WHEN {waiting} THEN 'cancelled' ELSE state END,"
                f" finished = CASE WHEN {waiting} THEN {NOW} ELSE finished END,"
                f" owner = CASE WHEN {waiting} THEN NULL ELSE owner END,"
                f" cancel_requested = ({waiting}) IS NOT TRUE OR cancel_requested,"  # running:
                f" cancel_at = CASE WHEN {waiting} THEN cancel_at ELSE {NOW} END"  # it stops
                f" WHERE id = %s AND {UNFINISHED}",
                (job_id,),
            )
        return self.get(job_id)

    def progress(
        self, job_id: str, step: int, total: int, loss: float | None, val_loss: float | None
    ) -> None:
        fence, args = self._fence()
        with self._pool.connection() as conn, conn.transaction():
            moved = conn.execute(
                f"UPDATE jobs SET step = %s, total = %s, progress_at = {NOW}, heartbeat = {NOW},"
                f" rate_t0 = COALESCE(rate_t0, {NOW}), rate_s0 = COALESCE(rate_s0, %s)"
                f" WHERE id = %s {fence}",
                (step, total, step, job_id, *args),
            ).rowcount
            if moved and (loss is not None or val_loss is not None):
                conn.execute(
                    "INSERT INTO job_points VALUES (%s, %s, %s, %s) ON CONFLICT (job, step)"
                    " DO UPDATE SET loss = EXCLUDED.loss, val_loss = EXCLUDED.val_loss",
                    (job_id, step, loss, val_loss),
                )

    def beat(self, job_id: str) -> bool:
        """The worker is alive; False when this store's claim on the job is gone."""
        fence, args = self._fence()
        with self._pool.connection() as conn:
            return (
                int(
                    conn.execute(
                        f"UPDATE jobs SET heartbeat = {NOW} WHERE id = %s {fence}",
                        (job_id, *args),
                    ).rowcount
                )
                > 0
            )

    def cancel_requested(self, job_id: str) -> bool:
        rows = self._rows("SELECT cancel_requested FROM jobs WHERE id = %s", (job_id,))
        return bool(rows and rows[0]["cancel_requested"])

    def cancel_at(self, job_id: str) -> float | None:
        rows = self._rows("SELECT cancel_at FROM jobs WHERE id = %s", (job_id,))
        return rows[0]["cancel_at"] if rows else None

    # ---- the cluster's calls --------------------------------------------------------------
    def claim(self, owner: str) -> tuple[str, int] | None:
        """Take the oldest queued job for ``owner``: (its id, this claim's attempt number)."""
        with self._pool.connection() as conn, conn.transaction():
            row = conn.execute(
                f"UPDATE jobs SET state = 'running', owner = %s, lease_until = {NOW} + %s,"
                f" heartbeat = {NOW}, started = COALESCE(started, {NOW}),"
                " attempts = attempts + 1, pid = NULL, rate_t0 = NULL, rate_s0 = NULL"
                " WHERE id = (SELECT id FROM jobs WHERE kind = %s AND state = 'queued'"
                "  ORDER BY created, id FOR UPDATE SKIP LOCKED LIMIT 1)"
                " RETURNING id, attempts",
                (owner, self.lease_s, self.kind),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                f"INSERT INTO job_claims VALUES (%s, %s, %s, {NOW})", (row[0], row[1], owner)
            )
        return str(row[0]), int(row[1])

    def started(self, job_id: str, pid: int) -> bool:
        """The claimed job's worker is ``pid`` (a fenced store: only on its claim)."""
        return self._set(job_id, "state = 'running'", pid=pid)

    def renew(self, owner: str) -> int:
        """Extend ``owner``'s lease on every job it validates or runs; how many it holds."""
        with self._pool.connection() as conn:
            return int(
                conn.execute(
                    f"UPDATE jobs SET lease_until = {NOW} + %s WHERE kind = %s AND owner = %s"
                    " AND state IN ('validating', 'running')",
                    (self.lease_s, self.kind, owner),
                ).rowcount
            )

    def expire(self) -> builtins.list[str]:
        """Running jobs whose replica's lease ran out, back in the queue."""
        rows = self._rows(
            "UPDATE jobs SET state = 'queued', owner = NULL, pid = NULL, lease_until = NULL"
            f" WHERE kind = %s AND state = 'running' AND lease_until < {NOW} RETURNING id",
            (self.kind,),
        )
        return [r["id"] for r in rows]

    def adopt(self, owner: str) -> builtins.list[str]:
        """Validating jobs whose replica's lease ran out, now ``owner``'s to validate."""
        rows = self._rows(
            f"UPDATE jobs SET owner = %s, lease_until = {NOW} + %s WHERE id IN ("
            "SELECT id FROM jobs WHERE kind = %s AND state = 'validating'"
            f" AND (lease_until IS NULL OR lease_until < {NOW}) FOR UPDATE SKIP LOCKED)"
            " RETURNING id",
            (owner, self.lease_s, self.kind),
        )
        return [r["id"] for r in rows]

    def claims(self, job_id: str) -> builtins.list[tuple[int, str]]:
        """Every claim of the job so far: (attempt, owner), oldest first."""
        rows = self._rows(
            "SELECT attempt, owner FROM job_claims WHERE job = %s ORDER BY attempt", (job_id,)
        )
        return [(r["attempt"], r["owner"]) for r in rows]


def worker_store(job_dir: Path) -> Any:
    """The store a worker for ``job_dir`` reports to: the data dir's SQLite store, or, when the
    runner that started it shares a database (``tuner.pg.Database.from_env``), the database's
    queue, fenced to the claim the worker runs on."""
    database = Database.from_env()
    if database is None or ATTEMPT_ENV not in os.environ:
        return JobStore(job_dir.parent / "jobs.db")
    return PgJobStore(
        database,
        job_dir.parent.name,
        job_dir.parent.parent,
        attempt=int(os.environ[ATTEMPT_ENV]),
        lease_s=float(os.environ.get(LEASE_ENV) or LEASE_S),
    )

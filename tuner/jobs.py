"""Training jobs: a SQLite job store and a runner that trains one job at a time in a subprocess.

Layout under ``data_dir``: ``jobs/jobs.db`` (WAL) and one folder per job, ``jobs/<id>/``, holding
``recipe.json``, ``job.json`` (options for the worker), the prepared ``data/``, the trainer's
``checkpoints/`` and ``log.txt`` (the worker's stdout and stderr). Uploaded training files live in
``files/<id>.jsonl`` beside ``files/<id>.json`` (their metadata); a client's file name is only
ever metadata, never a path.

A job moves validating -> queued -> running -> succeeded | failed | cancelled. ``submit`` checks
the recipe at once (``ValueError``), then ``prepare(recipe, job_dir)`` runs in a thread of THIS
process (the only one allowed to open the live index); the runner's supervisor thread then starts
``python -m tuner.worker <job_dir>`` for the oldest queued job and watches it. Cancelling sets a
flag the worker polls every step; a worker that has not stopped 10 s later is terminated. When a
runner starts, jobs a crash left running (dead pid; a live orphan is stopped first), validating or
queued are taken up again and training resumes from the last checkpoint.

The runner is not only for training: ``JobRunner(folder="evals", parse=..., command=...)``
runs evaluation jobs the same way (the service starts ``python -m eval.worker`` this way, without
importing ``eval``). What a job is asked to do only needs a ``name``, a ``method`` and
``to_dict()`` (see ``JobSpec``); for an eval job ``progress`` carries no loss.

Knows nothing of HTTP, models, the index or how training works: ``prepare``, the parser of job
specs and the worker command are given to it.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import json
import logging
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tuner.config import recipe_from_dict
from tuner.durable import atomic_write_text
from tuner.layout import JOBS

log = logging.getLogger(__name__)

STATES = ("validating", "queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
STOP_GRACE_S = 10.0  # a cancelled worker gets this long to stop by itself
LOG_TAIL_LINES = 20


class JobSpec(Protocol):
    """What a job is asked to do, as the store keeps it (``tuner.config.Recipe`` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def method(self) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


Prepare = Callable[[Any, Path], Any]  # (the parsed spec, the job's folder)
Parse = Callable[[dict[str, Any]], Any]  # a spec dict -> a JobSpec; ValueError when it is bad


class JobNotFound(LookupError):
    """No job has this id."""


class JobFinished(Exception):
    """The job already finished; it cannot be cancelled."""


@dataclass
class Job:
    """One job as the store holds it (curves as ``[step, value]`` pairs)."""

    id: str
    name: str
    method: str
    state: str
    step: int
    total: int | None
    loss_curve: list[list[float]]
    val_losses: list[list[float]]
    eta_s: float | None
    error: str | None
    problems: list[list[Any]]
    adapter: str | None
    pid: int | None
    heartbeat: float | None
    cancel_requested: bool
    attempts: int
    created: float
    started: float | None
    finished: float | None
    recipe: dict[str, Any] = field(default_factory=dict)


SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    method TEXT NOT NULL,
    recipe TEXT NOT NULL,
    state TEXT NOT NULL,
    step INTEGER NOT NULL DEFAULT 0,
    total INTEGER,
    rate_t0 REAL,
    rate_s0 INTEGER,
    progress_at REAL,
    error TEXT,
    problems TEXT NOT NULL DEFAULT '[]',
    adapter TEXT,
    pid INTEGER,
    heartbeat REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    cancel_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    finished REAL
);
CREATE TABLE IF NOT EXISTS points (
    job TEXT NOT NULL,
    step INTEGER NOT NULL,
    loss REAL,
    val_loss REAL,
    PRIMARY KEY (job, step)
);
"""


class JobStore:
    """Jobs in SQLite (WAL), shared by the service process and the worker process.

    Every call opens its own short connection, so threads and processes need no other lock;
    transitions are conditional updates, so a finished job never changes state again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=30000")
            yield db
        finally:
            db.close()

    def _set(self, job_id: str, where: str = "", **values: Any) -> bool:
        cols = ", ".join(f"{k} = ?" for k in values)
        sql = f"UPDATE jobs SET {cols} WHERE id = ?" + (f" AND {where}" if where else "")
        with self._db() as db:
            return db.execute(sql, [*values.values(), job_id]).rowcount > 0

    def create(self, recipe: JobSpec) -> str:
        job_id = f"job-{secrets.token_hex(8)}"
        with self._db() as db:
            db.execute(
                "INSERT INTO jobs (id, name, method, recipe, state, created)"
                " VALUES (?, ?, ?, ?, 'validating', ?)",
                (job_id, recipe.name, recipe.method, json.dumps(recipe.to_dict()), time.time()),
            )
        return job_id

    def get(self, job_id: str) -> Job:
        with self._db() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(job_id)
            points = db.execute(
                "SELECT step, loss, val_loss FROM points WHERE job = ? ORDER BY step", (job_id,)
            ).fetchall()
        return _job(row, points)

    def list(self) -> list[Job]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM jobs ORDER BY created DESC").fetchall()
        return [_job(r, []) for r in rows]

    def ids_in(self, *states: str) -> builtins.list[str]:
        marks = ", ".join("?" for _ in states)
        with self._db() as db:
            rows = db.execute(
                f"SELECT id FROM jobs WHERE state IN ({marks}) ORDER BY created", states
            ).fetchall()
        return [r["id"] for r in rows]

    # ---- transitions ----------------------------------------------------------------------
    def queued(self, job_id: str) -> bool:
        return self._set(job_id, "state = 'validating'", state="queued")

    def running(self, job_id: str, pid: int) -> bool:
        now = time.time()
        with self._db() as db:
            return (
                db.execute(
                    "UPDATE jobs SET state = 'running', pid = ?, heartbeat = ?,"
                    " started = COALESCE(started, ?), attempts = attempts + 1,"
                    " rate_t0 = NULL, rate_s0 = NULL WHERE id = ? AND state = 'queued'",
                    (pid, now, now, job_id),
                ).rowcount
                > 0
            )

    def requeue(self, job_id: str) -> bool:
        """A running job back to the queue (its worker is gone); it resumes from a checkpoint."""
        return self._set(job_id, "state = 'running'", state="queued", pid=None)

    def finish(
        self,
        job_id: str,
        state: str,
        *,
        error: str | None = None,
        problems: Sequence[tuple[int, str]] = (),
        adapter: str | None = None,
    ) -> bool:
        if state not in FINISHED:
            raise ValueError(f"state: one of {FINISHED}, got {state!r}")
        return self._set(
            job_id,
            "state NOT IN ('succeeded', 'failed', 'cancelled')",
            state=state,
            error=error,
            problems=json.dumps([list(p) for p in problems]),
            adapter=adapter,
            finished=time.time(),
        )

    def cancel(self, job_id: str) -> Job:
        """Validating or queued: cancelled now. Running: flag it for the worker."""
        job = self.get(job_id)
        if job.state in FINISHED:
            raise JobFinished(f"job {job_id} already {job.state}")
        now = time.time()
        if not self._set(
            job_id, "state IN ('validating', 'queued')", state="cancelled", finished=now
        ):  # running (or it started running since get()): the worker stops at its next step
            self._set(job_id, "state = 'running'", cancel_requested=1, cancel_at=now)
        return self.get(job_id)

    # ---- written by the worker ------------------------------------------------------------
    def progress(
        self, job_id: str, step: int, total: int, loss: float | None, val_loss: float | None
    ) -> None:
        """Step ``step`` of ``total`` done; a point of the curves unless both losses are None."""
        now = time.time()
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "UPDATE jobs SET step = ?, total = ?, progress_at = ?, heartbeat = ?,"
                " rate_t0 = COALESCE(rate_t0, ?), rate_s0 = COALESCE(rate_s0, ?) WHERE id = ?",
                (step, total, now, now, now, step, job_id),
            )
            if loss is not None or val_loss is not None:
                db.execute(
                    "INSERT OR REPLACE INTO points (job, step, loss, val_loss) VALUES (?, ?, ?, ?)",
                    (job_id, step, loss, val_loss),
                )
            db.execute("COMMIT")

    def beat(self, job_id: str) -> None:
        self._set(job_id, heartbeat=time.time())

    def cancel_requested(self, job_id: str) -> bool:
        with self._db() as db:
            row = db.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row["cancel_requested"])

    def cancel_at(self, job_id: str) -> float | None:
        with self._db() as db:
            row = db.execute("SELECT cancel_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row["cancel_at"] if row else None


def _job(row: sqlite3.Row, points: Sequence[sqlite3.Row]) -> Job:
    eta = None
    step, total, t0, s0, at = (
        row["step"],
        row["total"],
        row["rate_t0"],
        row["rate_s0"],
        row["progress_at"],
    )
    if row["state"] == "running" and total and t0 and at and at > t0 and step > s0:
        eta = round((total - step) * (at - t0) / (step - s0), 1)
    return Job(
        id=row["id"],
        name=row["name"],
        method=row["method"],
        state=row["state"],
        step=step,
        total=total,
        loss_curve=[[p["step"], p["loss"]] for p in points if p["loss"] is not None],
        val_losses=[[p["step"], p["val_loss"]] for p in points if p["val_loss"] is not None],
        eta_s=eta,
        error=row["error"],
        problems=json.loads(row["problems"]),
        adapter=row["adapter"],
        pid=row["pid"],
        heartbeat=row["heartbeat"],
        cancel_requested=bool(row["cancel_requested"]),
        attempts=row["attempts"],
        created=row["created"],
        started=row["started"],
        finished=row["finished"],
        recipe=json.loads(row["recipe"]),
    )


class JobRunner:
    """Validates jobs in a thread, runs one at a time in a worker process, and supervises it.

    ``prepare(recipe, job_dir)`` writes the job's data (raises ``ValueError`` for bad data, with
    ``.problems`` when it has them); ``command`` is the worker's argv before the job folder
    (default ``python -m tuner.worker``); ``env`` adds to the worker's environment; ``options``
    are written to ``job.json`` for the worker (e.g. ``device``, ``threads``); ``on_success(job)``
    is called in the supervisor thread when a job succeeds (it should return quickly);
    ``folder`` is where under ``data_dir`` the jobs live; ``parse`` turns a submitted dict into
    the spec (a ``JobSpec``; default ``tuner.config.recipe_from_dict``).
    """

    def __init__(
        self,
        data_dir: Path,
        prepare: Prepare,
        *,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        options: Mapping[str, Any] | None = None,
        poll_s: float = 0.2,
        stop_grace_s: float = STOP_GRACE_S,
        on_success: Callable[[Job], None] | None = None,
        folder: str = JOBS,
        parse: Parse = recipe_from_dict,
    ) -> None:
        self.root = Path(data_dir) / folder
        self.parse = parse
        self.root.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(self.root / "jobs.db")
        self.prepare = prepare
        self.command = list(command or [sys.executable, "-m", "tuner.worker"])
        self.env = dict(env or {})
        self.options = dict(options or {})
        self.poll_s = poll_s
        self.stop_grace_s = stop_grace_s
        self.on_success = on_success
        self._validator = ThreadPoolExecutor(max_workers=1, thread_name_prefix="job-validate")
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._current: str | None = None
        self._lock_fd: int | None = None

    # ---- public ---------------------------------------------------------------------------
    def start(self) -> JobRunner:
        """Start supervising. Only the runner holding ``<folder>/runner.lock`` starts workers
        (one per data dir and folder); another one still accepts, validates and cancels jobs,
        and takes over, recovering what was left behind, once the lock is free."""
        self._thread = threading.Thread(target=self._supervise, name="job-runner", daemon=True)
        self._thread.start()
        return self

    @property
    def active(self) -> bool:
        """Whether this runner holds the lock (and so runs the workers)."""
        return self._lock_fd is not None

    def submit(self, recipe_dict: Mapping[str, Any]) -> str:
        """Check the recipe (``ValueError`` at once), then validate its data in a thread."""
        recipe = self.parse(dict(recipe_dict))
        job_id = self.store.create(recipe)
        job_dir = self.job_dir(job_id)
        job_dir.mkdir(parents=True)
        atomic_write_text(job_dir / "recipe.json", json.dumps(recipe.to_dict(), indent=2))
        atomic_write_text(job_dir / "job.json", json.dumps({"id": job_id, **self.options}))
        self._validator.submit(self._validate, job_id, recipe)
        return job_id

    def get(self, job_id: str) -> Job:
        return self.store.get(job_id)

    def list(self) -> builtins.list[Job]:
        return self.store.list()

    def cancel(self, job_id: str) -> Job:
        job = self.store.cancel(job_id)
        self._wake.set()
        return job

    def job_dir(self, job_id: str) -> Path:
        return self.root / job_id

    def close(self) -> None:
        """Stop supervising; a running worker is stopped and its job re-queued to resume later."""
        self._closed.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        self._validator.shutdown(wait=True, cancel_futures=False)
        if self._proc is not None and self._current is not None:
            _stop(self._proc)
            self.store.requeue(self._current)
            self._proc = self._current = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> JobRunner:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    # ---- validation (this process) --------------------------------------------------------
    def _validate(self, job_id: str, recipe: JobSpec) -> None:
        try:
            if self.store.get(job_id).state != "validating":
                return  # cancelled while waiting
            self.prepare(recipe, self.job_dir(job_id))
        except ValueError as exc:
            problems = getattr(exc, "problems", [])
            self.store.finish(job_id, "failed", error=str(exc), problems=problems)
            return
        except Exception as exc:  # noqa: BLE001 - any failure fails this job, not the runner
            log.exception("preparing job %s failed", job_id)
            self.store.finish(job_id, "failed", error=f"{type(exc).__name__}: {exc}")
            return
        if self.store.queued(job_id):
            self._wake.set()

    # ---- supervision ----------------------------------------------------------------------
    def _recover(self) -> None:
        for job_id in self.store.ids_in("running"):
            pid = self.store.get(job_id).pid
            if pid and _is_our_worker(pid, self.job_dir(job_id)):
                log.warning("job %s: stopping orphaned worker %d", job_id, pid)
                _stop_pid(pid, self.job_dir(job_id))
            log.info("job %s: resuming from its last checkpoint", job_id)
            self.store.requeue(job_id)
        for job_id in self.store.ids_in("validating"):
            try:
                recipe = self.parse(self.store.get(job_id).recipe)
            except ValueError as exc:  # a spec this version no longer accepts
                self.store.finish(job_id, "failed", error=str(exc))
                continue
            self._validator.submit(self._validate, job_id, recipe)

    def _take_lock(self) -> bool:
        if self._lock_fd is not None:
            return True
        fd = os.open(self.root / "runner.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        self._recover()
        return True

    def _supervise(self) -> None:
        while not self._closed.is_set():
            try:
                if not self._take_lock():
                    pass  # another runner runs the workers
                elif self._proc is None:
                    self._start_next()
                else:
                    self._watch()
            except Exception:  # noqa: BLE001 - the supervisor must outlive any one job
                log.exception("job runner")
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def _start_next(self) -> None:
        queued = self.store.ids_in("queued")
        if not queued:
            return
        job_id = queued[0]
        job_dir = self.job_dir(job_id)
        with open(job_dir / "log.txt", "ab") as logf:
            proc = subprocess.Popen(
                [*self.command, str(job_dir)],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,  # the service's terminal signals are not the worker's
            )
        if not self.store.running(job_id, proc.pid):  # cancelled in between
            _stop(proc)
            return
        self._proc, self._current = proc, job_id
        log.info("job %s: worker %d started", job_id, proc.pid)

    def _watch(self) -> None:
        assert self._proc is not None and self._current is not None
        proc, job_id = self._proc, self._current
        code = proc.poll()
        if code is None:
            asked = self.store.cancel_at(job_id)
            if asked is not None and time.time() - asked > self.stop_grace_s:
                log.warning("job %s: worker did not stop when cancelled; terminating", job_id)
                _stop(proc)
                self.store.finish(job_id, "cancelled")
            else:
                return
        else:
            self._finished(job_id, code)
            job = self.store.get(job_id)
            if job.state == "succeeded" and self.on_success is not None:
                try:
                    self.on_success(job)
                except Exception:  # noqa: BLE001 - a follow-up failing does not fail the job
                    log.exception("job %s: after-success step failed", job_id)
        self._proc = self._current = None

    def _finished(self, job_id: str, code: int) -> None:
        job = self.store.get(job_id)
        if job.state in FINISHED and code == 0:
            return
        if job.cancel_requested:
            self.store.finish(job_id, "cancelled")
            return
        if job.state in FINISHED:  # the worker recorded its own failure, with its log
            return
        last = tail(self.job_dir(job_id) / "log.txt")
        reason = f"worker exited with code {code}" + ("" if code else " without a result")
        self.store.finish(job_id, "failed", error=f"{reason}\n--- log.txt ---\n{last}")


# ---- processes and files ------------------------------------------------------------------
def _stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _stop_pid(pid: int, job_dir: Path, grace: float = 5.0) -> None:
    """Stop a worker this process did not start (so cannot wait for): TERM, then KILL."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _is_our_worker(pid, job_dir):
            time.sleep(0.1)
        if _is_our_worker(pid, job_dir):
            os.kill(pid, signal.SIGKILL)


def _is_our_worker(pid: int, job_dir: Path) -> bool:
    """Whether ``pid`` is alive and is the worker for ``job_dir`` (not a reused pid; a zombie
    has no command line)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return str(job_dir).encode() in cmdline.split(b"\0")


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# ---- shared by the worker processes (tuner.worker, eval.worker) ----------------------------
HEARTBEAT_S = 5.0


def start_heartbeat(store: JobStore, job_id: str) -> threading.Event:
    """Beat the job's heartbeat every ``HEARTBEAT_S`` in a daemon thread until the returned
    event is set."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                store.beat(job_id)
            except Exception:  # noqa: BLE001 - a busy database must not stop the work
                log.warning("heartbeat for %s failed", job_id, exc_info=True)

    threading.Thread(target=beat, name="job-heartbeat", daemon=True).start()
    return stop


def record_failure(store: JobStore, job_id: str, job_dir: Path, exc: BaseException) -> None:
    """Fail the job with the error and the tail of its log (the traceback goes to stderr,
    which the runner sends to ``job_dir/log.txt``)."""
    import traceback

    traceback.print_exc()
    sys.stderr.flush()
    last = tail(job_dir / "log.txt")
    error = f"{type(exc).__name__}: {exc}" + (f"\n--- log.txt ---\n{last}" if last else "")
    store.finish(job_id, "failed", error=error)

"""The job store: each job's record in SQLite (WAL), its states, and what worker processes share.

A job moves validating -> queued -> running -> succeeded | failed | cancelled (``STATES``);
every transition is a conditional update, so a finished job never changes state again. The
store lives at ``<folder>/jobs.db`` beside the job folders, and both the service process (the
runner, the routes) and the worker processes (``tuner.worker``, ``eval.worker``) open it; every
call opens its own short connection. The workers share ``start_heartbeat`` and
``record_failure`` (the traceback to the log, a one-line error on the job).

A job's ``error`` is what clients read, so it is always one line (``client_error``): the exception's
type and first line, absolute paths under the data dir made relative to it and others cut to
their last part. It is made so when written and again when read, so a record written by an
older version that holds a traceback is served as one line too; the full traceback lives in
the job's ``log.txt`` (the worker's stderr) and the server log.

Knows nothing of how jobs are run, of processes, HTTP, models or what a job does: a job spec is
anything with a ``name``, a ``method`` and ``to_dict()`` (``JobSpec``).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import re
import secrets
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tuner.durable import sqlite_wal

log = logging.getLogger(__name__)

STATES = ("validating", "queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
LOG_TAIL_LINES = 20
ERROR_MAX_CHARS = 500  # a job's one-line error
_ABSOLUTE = re.compile(r"(?<![\w.~-])/[^\s'\"`,;:()\[\]{}<>]+")
# "OSError: ", "RecordNotFound: ", "peft.tuners.X: " (a dotted name, or one that reads as an
# exception's); "CUDA: out of memory" and "Error: ..." are messages, not class names
_CLASS_NAME = re.compile(
    r"^(?:(?:[a-z_]\w*\.)+[A-Z]\w*|[A-Z]\w*(?:Error|Exception|NotFound|Unavailable|Busy|Refused"
    r"|Failed|Mismatch|Invalid\w*|Unusable|InUse|Cancelled|Exit|Interrupt|Warning)): ?"
)
_NOT_THE_ERROR = ("Traceback", "---", "During handling", "The above exception")


class JobSpec(Protocol):
    """What a job is asked to do, as the store keeps it (``tuner.config.Recipe`` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def method(self) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


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
        self.root = path.parent.parent  # the data dir: <data>/<jobs|evals>/jobs.db
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            sqlite_wal(db)
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
        return _job(row, points, self.root)

    def list(self) -> list[Job]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM jobs ORDER BY created DESC").fetchall()
        return [_job(r, [], self.root) for r in rows]

    def ids_in(self, *states: str) -> builtins.list[str]:
        marks = ", ".join("?" for _ in states)
        with self._db() as db:
            rows = db.execute(
                f"SELECT id FROM jobs WHERE state IN ({marks}) ORDER BY created", states
            ).fetchall()
        return [r["id"] for r in rows]

    # ---- transitions ----------------------------------------------------------------------
    def queued(self, job_id: str, owner: str | None = None) -> bool:
        """Validated: into the queue (``owner`` is a shared store's; one runner owns all here)."""
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
        owner: str | None = None,  # a shared store's fence; one runner owns all here
    ) -> bool:
        if state not in FINISHED:
            raise ValueError(f"state: one of {FINISHED}, got {state!r}")
        return self._set(
            job_id,
            "state NOT IN ('succeeded', 'failed', 'cancelled')",
            state=state,
            error=client_error(error, self.root),
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


def client_error(error: str | None, root: Path | None = None) -> str | None:
    """``error`` as one line a client may read: the first line (of a traceback, its exception
    line) without the class name of an exception that is not Python's own, paths under ``root``
    relative to it, and any other server path (under the home, temp, install or working folder,
    or a top-level folder that exists here) cut to its last part. Text that only looks like a
    path (``POST /v1/files``) stays."""
    if error is None:
        return None
    lines = [line for line in error.splitlines() if line.strip()]
    if not lines:
        return "the job failed"
    line = lines[0]
    if line.startswith("Traceback"):
        raised = [x for x in lines if not x[0].isspace() and not x.startswith(_NOT_THE_ERROR)]
        line = raised[-1] if raised else "the job failed"
    line = _CLASS_NAME.sub(_builtin_only, line.lstrip()).strip() or "the job failed"
    shown = [(k, "" if k == root else "…/", "." if k == root else "…") for k in _known_roots(root)]
    line = hide_folders(line, shown)
    return _ABSOLUTE.sub(_short_path, line)[:ERROR_MAX_CHARS]


def hide_folders(text: str, folders: Sequence[tuple[Path | str, str, str]]) -> str:
    """``text`` with each absolute ``folder`` replaced where it stands as a whole path: its
    ``folder/`` prefix by ``below`` and the folder alone by ``alone``; ``/data`` in ``/database``
    or in a URL's ``https://host/data/x`` is left alone. Longest folders first."""
    for folder, below, alone in sorted(folders, key=lambda f: -len(str(f[0]))):
        path = Path(folder).as_posix().rstrip("/")
        if not path.startswith("/") or path == "":
            continue  # a relative folder could match any word
        pattern = re.compile(rf"(?<![\w.~/:-]){re.escape(path)}(/|(?![\w.-]))")

        def shown(match: re.Match[str], below: str = below, alone: str = alone) -> str:
            return below if match.group(1) == "/" else alone

        text = pattern.sub(shown, text)
    return text


def _builtin_only(match: re.Match[str]) -> str:
    """Keep Python's own exception names (``OSError: ``); drop those of ragtune and its
    libraries, which say nothing to a client."""
    named = getattr(builtins, match.group(0).rstrip(" ").rstrip(":"), None)
    return match.group(0) if isinstance(named, type) and issubclass(named, BaseException) else ""


def _known_roots(root: Path | None) -> list[Path]:
    """Folders whose paths never reach a client, longest first (the data dir is made relative;
    the others are hidden, so a path with spaces below them leaks nothing either)."""
    import tempfile

    found = {Path.home(), Path(tempfile.gettempdir()), Path(sys.prefix), Path.cwd()}
    found |= {Path(sys.base_prefix), Path(__file__).resolve().parents[1]}
    ordered = sorted((p for p in found if p != Path("/")), key=lambda p: -len(p.as_posix()))
    return ([root] if root is not None else []) + ordered


def _short_path(match: re.Match[str]) -> str:
    text = match.group(0)
    first = text.lstrip("/").split("/", 1)[0]
    if "/" not in text.lstrip("/") or not first or not Path("/", first).is_dir():
        return text  # not a path on this machine: an URL path, a ratio, a route
    return Path(text).name or "/"


def _job(
    row: Mapping[str, Any], points: Sequence[Mapping[str, Any]], root: Path | None = None
) -> Job:
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
        error=client_error(row["error"], root),
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


# ---- log files and the workers' side (tuner.worker, eval.worker) ----------------------------
def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


HEARTBEAT_S = 5.0
ATTEMPT_ENV = "RAGTUNE_JOB_ATTEMPT"  # set by a shared runner: the claim this worker runs on
PARENT_ENV = "RAGTUNE_JOB_PARENT"  # and the pid of the replica that started it
FENCED_BEAT_S = 1.0  # a fenced worker checks its claim this often
CLAIM_LOST_EXIT = 75  # a worker that lost its claim (or its replica) stops with this code


def start_heartbeat(store: Any, job_id: str) -> threading.Event:
    """Beat the job's heartbeat every ``HEARTBEAT_S`` in a daemon thread until the returned
    event is set. A fenced worker (one of a shared queue's claims) stops at once, with
    ``CLAIM_LOST_EXIT``, when its claim is gone or the replica that started it died, so another
    replica's resumed run never overlaps it."""
    stop = threading.Event()
    fenced = getattr(store, "attempt", None) is not None
    parent = int(os.environ.get(PARENT_ENV) or os.getppid())
    silence_s = float(getattr(store, "lease_s", 0) or 0)  # unheard this long: the claim is gone

    def lost(why: str) -> None:
        log.error("job %s: %s; stopping this worker", job_id, why)
        sys.stderr.flush()
        os._exit(CLAIM_LOST_EXIT)

    def beat() -> None:
        last_heard = time.monotonic()
        while not stop.wait(FENCED_BEAT_S if fenced else HEARTBEAT_S):
            if fenced and os.getppid() != parent:
                lost("the replica that started this worker is gone")
            try:
                held = store.beat(job_id)
            except Exception:  # noqa: BLE001 - a busy database must not stop the work
                log.warning("heartbeat for %s failed", job_id, exc_info=True)
                if fenced and silence_s and time.monotonic() - last_heard > silence_s:
                    lost("no word from the database for longer than the lease")
                continue
            last_heard = time.monotonic()
            if fenced and held is False and not stop.is_set():
                lost("its claim on the job was taken over")

    threading.Thread(target=beat, name="job-heartbeat", daemon=True).start()
    return stop


def record_failure(store: Any, job_id: str, job_dir: Path, exc: BaseException) -> None:
    """Fail the job with a one-line error; the traceback goes to this worker's log (stderr,
    which the runner sends to ``job_dir/log.txt``)."""
    import traceback

    traceback.print_exception(exc)
    sys.stderr.flush()
    store.finish(job_id, "failed", error=f"{type(exc).__name__}: {exc}")

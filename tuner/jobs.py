"""Run jobs one at a time in worker processes: training jobs, and eval runs the same way.

``JobRunner`` keeps its jobs under ``data_dir/<folder>/`` (``jobs`` by default): the store
``jobs.db`` (``tuner.jobstore``) and one folder per job holding ``recipe.json`` (the spec),
``job.json`` (options for the worker), what ``prepare`` wrote (``data/``), what the worker
writes (a trainer's ``checkpoints/``) and ``log.txt`` (the worker's stdout and stderr).

``submit`` checks the spec at once (``ValueError``), then ``prepare(spec, job_dir)`` runs in a
thread of THIS process (the only one allowed to open the live index); the runner's supervisor
thread then starts ``<command> <job_dir>`` (default ``python -m tuner.worker``) for the oldest
queued job and watches it. Cancelling sets a flag the worker polls; a worker that has not
stopped ``stop_grace_s`` (10 s) later is terminated. When a runner starts, jobs a crash left
running (dead pid; a live orphan is stopped first), validating or queued are taken up again and
a training job resumes from its last checkpoint. Only the runner holding ``runner.lock`` starts
workers.

With a ``database`` (``tuner.pg.Database``) the queue is shared by every replica over one data
dir (``tuner.pgjobs``): there is no ``runner.lock``; every runner claims queued jobs with
``FOR UPDATE SKIP LOCKED`` (so each job runs on exactly one replica), renews a lease on what it
validates and runs, and takes back into the queue, or validates itself, the jobs of a replica
whose lease ran out (one that was killed). Its workers are fenced to their claim: they stop
when their replica dies or their claim passes to another replica
(``tuner.jobstore.start_heartbeat``), so a resumed job never trains twice at once.

The runner is not only for training: ``JobRunner(folder="evals", parse=..., command=...)``
runs evaluation runs the same way (the service starts ``python -m eval.worker`` this way,
without importing ``eval``); for an eval run ``progress`` carries no loss.

Knows nothing of HTTP, models, the index, how training or evaluation work, or where uploaded
files live: ``prepare``, the parser of job specs and the worker command are given to it.
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
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tuner.config import recipe_from_dict
from tuner.durable import atomic_write_text
from tuner.jobstore import (
    ATTEMPT_ENV,
    CLAIM_LOST_EXIT,
    FINISHED,
    PARENT_ENV,
    Job,
    JobSpec,
    JobStore,
    tail,
)
from tuner.layout import JOBS
from tuner.pg import Database

log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0  # a cancelled worker gets this long to stop by itself
UPKEEP_S = 1.0  # a shared runner looks for other replicas' expired jobs this often


Prepare = Callable[[Any, Path], Any]  # (the parsed spec, the job's folder)
Parse = Callable[[dict[str, Any]], Any]  # a spec dict -> a JobSpec; ValueError when it is bad


class JobRunner:
    """Validates jobs in a thread, runs one at a time in a worker process, and supervises it:
    training jobs by default, eval runs with ``folder="evals"`` and the eval worker's command.

    ``prepare(spec, job_dir)`` writes the job's data (raises ``ValueError`` for bad data, with
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
        database: Database | None = None,
        owner: str | None = None,
        lease_s: float | None = None,
    ) -> None:
        self.root = Path(data_dir) / folder
        self.parse = parse
        self.root.mkdir(parents=True, exist_ok=True)
        self.database = database
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.store: Any
        if database is None:
            self.store = JobStore(self.root / "jobs.db")
        else:
            from tuner.pgjobs import LEASE_S, PgJobStore

            self.store = PgJobStore(database, folder, Path(data_dir), lease_s=lease_s or LEASE_S)
        self._claim: Any = self.store  # the current job's store (fenced to its claim if shared)
        self._released = threading.Event()  # set last on close: leases are renewed until then
        self._upkept = 0.0
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
        # submit and _recover both hand "validating" jobs to the validator: a job this runner
        # submitted is its own to validate, never taken up again as one left behind
        self._submitting = threading.Lock()
        self._mine: set[str] = set()

    # ---- public ---------------------------------------------------------------------------
    def start(self) -> JobRunner:
        """Start supervising. Only the runner holding ``<folder>/runner.lock`` starts workers
        (one per data dir and folder); another one still accepts, validates and cancels jobs,
        and takes over, recovering what was left behind, once the lock is free."""
        self._thread = threading.Thread(target=self._supervise, name="job-runner", daemon=True)
        self._thread.start()
        if self.database is not None:
            threading.Thread(target=self._renew, name="job-lease", daemon=True).start()
        return self

    @property
    def active(self) -> bool:
        """Whether this runner runs workers (it holds the lock, or shares a database queue)."""
        return self._lock_fd is not None or self.database is not None

    def submit(self, recipe_dict: Mapping[str, Any], files: Mapping[str, str] | None = None) -> str:
        """Check the recipe (``ValueError`` at once), then validate its data in a thread.
        ``files`` (name -> text) are written into the job's folder first, for its worker (a
        sweep trial's ``sweep.json``)."""
        recipe = self.parse(dict(recipe_dict))
        with self._submitting:
            job_id = self.store.create(recipe, **self._owned())
            self._mine.add(job_id)
            job_dir = self.job_dir(job_id)
            job_dir.mkdir(parents=True)
            for name, text in (files or {}).items():
                atomic_write_text(job_dir / Path(name).name, text)
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
            self._claim.requeue(self._current)
            self._proc = self._current = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        first = not self._released.is_set()  # a runner closed twice closes its pool once
        self._released.set()  # the lease thread stops before the pool goes
        if self.database is not None and first:
            self.store.close()

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
            self.store.finish(job_id, "failed", error=str(exc), problems=problems, **self._owned())
            return
        except Exception as exc:  # noqa: BLE001 - any failure fails this job, not the runner
            log.exception("preparing job %s failed", job_id)
            error = f"{type(exc).__name__}: {exc}"
            self.store.finish(job_id, "failed", error=error, **self._owned())
            return
        if self.store.queued(job_id, **self._owned()):
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
        with self._submitting:
            left = [j for j in self.store.ids_in("validating") if j not in self._mine]
        for job_id in left:
            self._validate_again(job_id)

    def _validate_again(self, job_id: str) -> None:
        """Validate a job another runner left validating (it stopped, or its replica died)."""
        try:
            recipe = self.parse(self.store.get(job_id).recipe)
        except ValueError as exc:  # a spec this version no longer accepts
            self.store.finish(job_id, "failed", error=str(exc))
            return
        self._validator.submit(self._validate, job_id, recipe)

    def _owned(self) -> dict[str, Any]:
        return {} if self.database is None else {"owner": self.owner}

    def _renew(self) -> None:
        """Keep this replica's lease on the jobs it validates and runs (a shared queue)."""
        while not self._released.wait(self.store.lease_s / 4):
            try:
                self.store.renew(self.owner)
            except Exception as exc:  # noqa: BLE001 - the database is away: try again
                log.warning("job lease not renewed (%s)", exc)

    def _upkeep(self) -> None:
        """A shared queue: what a dead replica ran goes back in the queue, and what it was
        validating is validated here."""
        now = time.monotonic()
        if now - self._upkept < UPKEEP_S:
            return
        self._upkept = now
        self.store.renew(self.owner)  # ours first: back from an outage, we are not the dead
        for job_id in self.store.expire():
            log.warning("job %s: its replica stopped renewing its lease; queued again", job_id)
        for job_id in self.store.adopt(self.owner):
            log.warning("job %s: validating it here; its replica is gone", job_id)
            self._validate_again(job_id)

    def _take_lock(self) -> bool:
        if self.database is not None:
            self._upkeep()
            return True
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
        if self.database is not None:
            self._start_claimed()
            return
        queued = self.store.ids_in("queued")
        if not queued:
            return
        job_id = queued[0]
        proc = self._spawn(job_id, {})
        if not self.store.running(job_id, proc.pid):  # cancelled in between
            _stop(proc)
            return
        self._proc, self._current, self._claim = proc, job_id, self.store
        log.info("job %s: worker %d started", job_id, proc.pid)

    def _start_claimed(self) -> None:
        """Claim the queue's oldest job for this replica and start its worker on the claim."""
        from tuner.pgjobs import LEASE_ENV

        claimed = self.store.claim(self.owner)
        if claimed is None:
            return
        job_id, attempt = claimed
        claim = self.store.fenced(attempt)
        assert self.database is not None
        try:
            fence = {ATTEMPT_ENV: str(attempt), PARENT_ENV: str(os.getpid())}
            fence[LEASE_ENV] = str(self.store.lease_s)
            proc = self._spawn(job_id, {**self.database.env(), **fence})
        except Exception:
            claim.requeue(job_id)
            raise
        claim.started(job_id, proc.pid)
        self._proc, self._current, self._claim = proc, job_id, claim
        log.info("job %s: worker %d started (claim %d, %s)", job_id, proc.pid, attempt, self.owner)

    def _spawn(self, job_id: str, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        job_dir = self.job_dir(job_id)
        with open(job_dir / "log.txt", "ab") as logf:
            return subprocess.Popen(
                [*self.command, str(job_dir)],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env, **env},
                start_new_session=True,  # the service's terminal signals are not the worker's
            )

    def _watch(self) -> None:
        assert self._proc is not None and self._current is not None
        proc, job_id = self._proc, self._current
        code = proc.poll()
        if code is None:
            asked = self.store.cancel_at(job_id)
            if asked is not None and time.time() - asked > self.stop_grace_s:
                log.warning("job %s: worker did not stop when cancelled; terminating", job_id)
                _stop(proc)
                self._claim.finish(job_id, "cancelled")
            else:
                return
        else:
            self._finished(job_id, code)
            job = self.store.get(job_id)
            ours = not (self.database is not None and code == CLAIM_LOST_EXIT)
            if job.state == "succeeded" and ours and self.on_success is not None:
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
            self._claim.finish(job_id, "cancelled")
            return
        if self.database is not None and code == CLAIM_LOST_EXIT and job.state not in FINISHED:
            log.warning("job %s: its worker lost its claim; another replica resumes it", job_id)
            self._claim.requeue(job_id)  # no-op when another replica holds it already
            return
        if job.state in FINISHED:  # the worker recorded its own failure, with its log
            return
        last = tail(self.job_dir(job_id) / "log.txt")
        reason = f"worker exited with code {code}" + ("" if code else " without a result")
        log.error("job %s: %s; the end of its log.txt:\n%s", job_id, reason, last)
        self._claim.finish(job_id, "failed", error=reason)  # one line for clients; the log has more


# ---- processes ------------------------------------------------------------------------
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

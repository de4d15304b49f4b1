"""The jobs API's sweeps: each one driven by a thread of this process, each trial a tuning job.

``SweepRunner.submit(recipe)`` opens a new sweep under ``DATA_DIR/sweeps`` (``tuner.sweep``)
and starts its driver thread. The driver hands every trial's recipe to the app's tuning job
runner (``JobRunner.submit``, with the trial's ``sweep.json`` in the job folder): the trial's
data is prepared here, where the index is open, and it trains in a worker process like any
job, with its progress on its job. The driver reads the job's validation losses from the job
store for the pruner and cancels the job when the pruner says so (the worker saves nothing);
cancelling the sweep, or any of its trial jobs, cancels the sweep.

When the service stops, the drivers stop watching and leave their sweeps running; the job
runner re-queues the trial it was training. The next start finds those sweeps and resumes them:
a trial left running is the same job again, resumed from its last checkpoint.

With replicas over one database (``database``), a sweep is driven by one replica at a time:
its driver holds a session advisory lock named after the sweep for as long as it drives it.
Every replica looks for sweeps nobody drives every ``RESCAN_S`` and takes them up, so when the
replica driving a sweep dies (its session, and so its lock, goes with it) another one resumes
the sweep, with the trial's job resumed by the job queue.

Knows nothing of HTTP or of how a trial trains.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tuner.config import Recipe, recipe_from_dict
from tuner.hooks import SWEEP_FILE, Cancelled, Hooks
from tuner.jobs import JobRunner
from tuner.jobstore import FINISHED, JobNotFound
from tuner.pg import Database
from tuner.registry import Registry
from tuner.sweep import Interrupted, Sweep, TrialInfo, new_sweep_id

log = logging.getLogger(__name__)

API_MARK = "api"  # a file in a sweep's folder: the service runs it (the CLI runs its own)
CANCEL_MARK = "cancel"  # a file in a sweep's folder: it was cancelled


class SweepNotFound(LookupError):
    """No sweep has this id."""


class SweepFinished(Exception):
    """The sweep already finished; it cannot be cancelled."""


class TooManySweeps(RuntimeError):
    """As many sweeps as the service drives at once are running."""


MAX_RUNNING = 4  # sweeps driven at once (their trials still train one job at a time)
RESCAN_S = 5.0  # with a shared database: how often a replica looks for undriven sweeps
LOCK_SWEEP = 7_401  # advisory lock key (first int) of a sweep's driver


class SweepRunner:
    """Drives the service's sweeps, one thread each, their trials through ``jobs``."""

    def __init__(
        self,
        root: Path,
        jobs: JobRunner,
        registry: Registry,
        poll_s: float = 0.5,
        record_of: Callable[[str], Any] | None = None,
        evals: JobRunner | None = None,
        database: Database | None = None,
    ) -> None:
        """``record_of(adapter_id)`` reads a finished trial's record (default: ``registry``);
        ``evals`` runs the eval that scores each trial of a sweep on objective eval."""
        self.root, self.jobs, self.poll_s, self.evals = Path(root), jobs, poll_s, evals
        self.record_of = record_of or registry.get
        self.database = database
        self._closed = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._loaded: dict[str, Sweep] = {}  # one Sweep (and study storage) per folder
        self._local = threading.local()  # a driver thread's connection holding its lock

    # ---- public ---------------------------------------------------------------------------
    def start(self) -> SweepRunner:
        """Resume the sweeps a stop left running (or queued); with a shared database, keep
        looking for those another replica stopped driving."""
        import optuna  # noqa: F401 - here, once: drivers importing it at once race inside it

        self._resume()
        if self.database is not None:
            threading.Thread(target=self._rescan, name="sweep-rescan", daemon=True).start()
        return self

    def _resume(self) -> None:
        if not self.root.is_dir():
            return
        for folder in sorted(self.root.iterdir()):
            if not (folder / API_MARK).is_file():
                continue
            with self._lock:
                if folder.name in self._threads:
                    continue
            sweep = self._sweep(folder.name)
            if sweep.state() in ("queued", "running"):  # a cancelled one ends as such
                log.info("sweep %s: resuming", sweep.id)
                self._drive(sweep)

    def _rescan(self) -> None:
        while not self._closed.wait(RESCAN_S):
            try:
                self._resume()
            except Exception:  # noqa: BLE001 - a half-written folder: look again later
                log.exception("sweeps: looking for undriven sweeps")

    def submit(self, recipe_dict: dict[str, Any]) -> str:
        """Open a new sweep of ``recipe_dict`` (which has a sweep block; ``ValueError`` when it
        is not a recipe or has none) and start driving it."""
        recipe = recipe_from_dict(dict(recipe_dict))
        if recipe.sweep is None:
            raise ValueError("sweep: the recipe has no sweep block")
        with self._lock:
            if len(self._threads) >= MAX_RUNNING:
                raise TooManySweeps(f"{MAX_RUNNING} sweeps are running; wait for one or cancel one")
        sweep = Sweep.open(self.root, recipe, sweep_id_=new_sweep_id(recipe))
        (sweep.folder / API_MARK).touch()
        self._drive(sweep)
        return sweep.id

    def get(self, sweep_id: str) -> dict[str, Any]:
        """The sweep's summary, with the job of the trial it is training (if any)."""
        sweep = self._sweep(sweep_id)
        summary = sweep.summary()
        saved = _saved(sweep.folder)  # the driver's last summary: its error and report
        summary["error"] = saved.get("error")
        summary["cancel_requested"] = (sweep.folder / CANCEL_MARK).is_file()
        running = [t for t in summary["trials"] if t["state"] == "running"]
        summary["current_job"] = running[-1]["key"] if running else None
        report = saved.get("report")
        summary["report"] = report if isinstance(report, dict) else None
        return summary

    def list(self) -> list[dict[str, Any]]:
        if not self.root.is_dir():
            return []
        ids = [f.name for f in sorted(self.root.iterdir()) if (f / API_MARK).is_file()]
        return [self.get(i) for i in ids]

    def cancel(self, sweep_id: str) -> dict[str, Any]:
        """Stop the sweep: its running trial's job is cancelled, no trial starts after it."""
        sweep = self._sweep(sweep_id)
        if sweep.state() in ("succeeded", "failed", "cancelled"):
            raise SweepFinished(f"sweep {sweep_id} already {sweep.state()}")
        (sweep.folder / CANCEL_MARK).touch()
        with self._lock:
            driven = sweep.id in self._threads
        if not driven:  # nobody drives it (yet): its driver's first look ends it as cancelled
            self._drive(sweep)
        current = self.get(sweep_id)["current_job"]
        if current:
            try:
                self.jobs.cancel(current)
            except Exception:  # noqa: BLE001 - it may have just finished; the driver stops anyway
                log.info("sweep %s: trial job %s had finished", sweep_id, current)
        return self.get(sweep_id)

    def folder(self, sweep_id: str) -> Path:
        return self._sweep(sweep_id).folder

    def close(self) -> None:
        """Stop the drivers; their sweeps stay running, resumed at the next start."""
        self._closed.set()
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(timeout=30)

    # ---- driving --------------------------------------------------------------------------
    def _sweep(self, sweep_id: str) -> Sweep:
        folder = self.root / sweep_id
        if "/" in sweep_id or sweep_id.startswith(".") or not (folder / API_MARK).is_file():
            raise SweepNotFound(sweep_id)
        with self._lock:
            if sweep_id not in self._loaded:
                self._loaded[sweep_id] = Sweep.load(folder)
            return self._loaded[sweep_id]

    def _drive(self, sweep: Sweep) -> None:
        thread = threading.Thread(
            target=self._run, args=(sweep,), name=f"sweep-{sweep.id}", daemon=True
        )
        with self._lock:
            if sweep.id in self._threads:
                return
            self._threads[sweep.id] = thread
        thread.start()

    @contextlib.contextmanager
    def _driving(self, sweep_id: str) -> Iterator[bool]:
        """Whether this replica may drive the sweep: always alone; with a shared database, while
        it holds the sweep's advisory lock (no other replica drives it)."""
        if self.database is None:
            yield True
            return
        import psycopg

        with psycopg.connect(self.database.url, autocommit=True, connect_timeout=10) as conn:
            row = conn.execute(
                "SELECT pg_try_advisory_lock(%s, hashtext(%s))", (LOCK_SWEEP, sweep_id)
            ).fetchone()
            self._local.lock_conn = conn
            try:
                yield bool(row and row[0])  # the lock ends with this session
            finally:
                self._local.lock_conn = None

    def _stopping(self) -> bool:
        """Whether this driver must let go of its sweep: the service stops, or (shared) the
        session holding the sweep's lock is gone, so another replica may take it now."""
        if self._closed.is_set():
            return True
        conn = getattr(self._local, "lock_conn", None)
        if conn is None:
            return False
        try:
            conn.execute("SELECT 1")
        except Exception:  # noqa: BLE001 - any failure: the lock may be someone else's now
            log.warning("sweep driver: lost its lock's session; leaving the sweep")
            return True
        return False

    def _run(self, sweep: Sweep) -> None:
        try:
            with self._driving(sweep.id) as mine:
                if mine:
                    self._run_driven(sweep)
        except Exception:  # noqa: BLE001 - e.g. the database is away: the next rescan retries
            log.exception("sweep %s: could not take the sweep's lock", sweep.id)
        finally:
            with self._lock:
                self._threads.pop(sweep.id, None)

    def _run_driven(self, sweep: Sweep) -> None:
        cancelled = sweep.folder / CANCEL_MARK
        score = self._scorer(sweep) if sweep.spec.eval is not None else None
        try:
            sweep.run(self._trial_runner(sweep), should_stop=cancelled.is_file, score=score)
        except Interrupted:
            log.info("sweep %s: left running, to resume at the next start", sweep.id)
        except Cancelled:
            log.info("sweep %s cancelled", sweep.id)
        except Exception:  # noqa: BLE001 - the sweep records its failure; the thread ends
            log.exception("sweep %s failed", sweep.id)

    def _trial_runner(self, sweep: Sweep) -> Any:
        def run_trial(recipe: Recipe, info: TrialInfo, hooks: Hooks) -> Any:
            job_id = info.resume if info.resume and self._known(info.resume) else None
            if job_id is None:  # submitted before a crash could record it: adopt that job
                job_id = self._submitted(info.sweep)
                if job_id is not None:
                    info.started(job_id)
            if job_id is None:
                job_id = self.jobs.submit(
                    recipe.to_dict(), files={SWEEP_FILE: json.dumps(info.sweep)}
                )
                info.started(job_id)
            return self._watch(job_id, hooks)

        return run_trial

    def _scorer(self, sweep: Sweep) -> Callable[[Any], float]:
        """Objective eval: an eval run of the trial's adapter (the app's eval runner) on the
        uploaded file ``sweep.eval.dataset``; its mean ``sweep.eval.metric``."""
        spec = sweep.spec.eval
        assert spec is not None

        def score(record: Any) -> float:
            if self.evals is None:
                raise RuntimeError("objective eval needs the eval run runner")
            options = {
                "modes": [spec.mode],
                f"{spec.mode}_adapter": record.id,
                "k": spec.k,
                "depth": spec.k,
                "max_new_tokens": spec.max_new_tokens,
                "resamples": 1000,
                "probes": False,
                **({"limit": spec.limit} if spec.limit else {}),
            }
            run_id = self.evals.submit(
                {"name": "sweep-eval", "file_id": spec.dataset, "options": options}
            )
            while (run := self.evals.get(run_id)).state not in FINISHED:
                if self._stopping():
                    self.evals.cancel(run_id)
                    raise Interrupted
                if (sweep.folder / CANCEL_MARK).is_file():
                    self.evals.cancel(run_id)
                    raise Cancelled(f"sweep {sweep.id} cancelled while scoring {record.id}")
                self._closed.wait(self.poll_s)
            if run.state != "succeeded":
                raise RuntimeError(f"eval run {run_id} {run.state}: {run.error or ''}".strip(": "))
            path = self.evals.job_dir(run_id) / "report" / "metrics.json"
            metrics = json.loads(path.read_text(encoding="utf-8"))
            return float(metrics["metrics"][spec.mode][spec.metric]["mean"])

        return score

    def _submitted(self, trial: dict[str, Any]) -> str | None:
        """An unfinished-or-succeeded job already submitted for this sweep trial, if any."""
        for job in self.jobs.list():
            if job.state in ("failed", "cancelled"):
                continue
            path = self.jobs.job_dir(job.id) / SWEEP_FILE
            try:
                theirs = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            keys = ("id", "run", "trial")
            if all(theirs.get(k) == trial.get(k) for k in keys):
                return job.id
        return None

    def _known(self, job_id: str) -> bool:
        try:
            self.jobs.get(job_id)
        except JobNotFound:
            return False
        return True

    def _watch(self, job_id: str, hooks: Hooks) -> Any:
        """Follow the trial's job to its end: validation losses to ``hooks``, and a cancel when
        ``hooks`` says stop (pruned, or the sweep cancelled). The record when it succeeds."""
        seen = 0
        while True:
            if self._stopping():
                raise Interrupted
            job = self.jobs.get(job_id)
            for step, value in job.val_losses[seen:]:
                loss = job.loss_curve[-1][1] if job.loss_curve else 0.0
                hooks.progress(int(step), job.total or 0, loss, value)
            seen = len(job.val_losses)
            if job.state in FINISHED:
                break
            if not job.cancel_requested and hooks.should_stop():
                self.jobs.cancel(job_id)
            self._closed.wait(self.poll_s)
        if job.state == "succeeded" and job.adapter:
            return self.record_of(job.adapter)
        if job.state == "cancelled":
            shutil.rmtree(self.jobs.job_dir(job_id) / "checkpoints", ignore_errors=True)
            raise Cancelled(f"trial job {job_id} cancelled")
        raise RuntimeError(job.error or f"trial job {job_id} {job.state}")


def _saved(folder: Path) -> dict[str, Any]:
    """The summary the driver last wrote ({} before its first)."""
    try:
        found = json.loads((folder / "sweep.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}

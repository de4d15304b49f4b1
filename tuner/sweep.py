"""Hyperparameter sweeps: Optuna searches a recipe's ``sweep.space``, each trial one tuning run.

``Sweep.open(root, recipe)`` keeps a sweep in ``root/<id>/``: the Optuna study in an SQLite
RDB storage (``study.db``), the recipe it searches (``recipe.json``), a summary every reader
can take (``sweep.json``, rewritten after each trial) and the report (``tuner.sweep_report``).
``Sweep.run(run_trial)`` proposes trials with the TPE sampler and hands each one's recipe to
``run_trial``, which trains it the way a single job of its caller trains (``ragtune tune`` in
its own process; the jobs API through the job runner) and returns the registry record. The
first trial trains the recipe's own values (the baseline) unless ``sweep.baseline`` is false.

A trial reports its validation losses as it trains; the pruner (median or Hyperband) compares
them with the other trials' at the same update and stops a trial that lags: it raises
``Cancelled`` in the trainer, so a pruned trial saves no adapter. Every trial that finishes is
in the registry under the sweep's id with its values (``Record.sweep``), and the best is named
in the summary, never promoted. A killed sweep resumes where it stopped: ``open`` with the same
recipe finds the study, and a trial left running is trained again with the same values and
the key its runner gave it (``started``), from which the runner resumes its checkpoints.

Knows nothing of HTTP, job stores, processes or how a trial trains.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tuner.config import Recipe, SweepParam, SweepSpec, get_path, recipe_from_dict, with_values
from tuner.durable import atomic_write_text
from tuner.hooks import Cancelled, Hooks

log = logging.getLogger(__name__)

STUDY_FILE = "study.db"
SUMMARY_FILE = "sweep.json"
RECIPE_FILE = "recipe.json"
_STORAGE_LOCK = threading.Lock()
MAX_FAILURES = 3  # trials failing in a row stop the sweep with the last one's error
SAVE_SPENT_S = 30.0  # how often a running trial saves the sweep's time spent


class SweepBusy(RuntimeError):
    """Another process is running this sweep."""


class Interrupted(BaseException):  # noqa: N818 - not an error: the sweep stays to resume
    """The process running a sweep is shutting down: the sweep and its trial stay running, to
    be resumed by the next ``run``."""


@dataclass
class TrialInfo:
    """What a trial runner is told: the record's ``sweep`` body, and how to resume."""

    sweep: dict[str, Any]  # {id, trial, params, baseline}: what the registry record keeps
    resume: str | None  # the key ``started`` gave when this trial ran before, or None
    started: Callable[[str], None]  # call with a key (a job id, a folder) to resume by


class RunTrial(Protocol):
    def __call__(self, recipe: Recipe, info: TrialInfo, hooks: Hooks) -> Any: ...


class _TrialHooks:
    """The trainer's hooks for one trial: validation losses go to the pruner, a lagging trial or
    a cancelled sweep stops the trainer; progress goes on to ``outer``."""

    def __init__(
        self,
        trial: Any,
        prunes: bool,
        outer: Hooks | None,
        stop: Callable[[], bool],
        tick: Callable[[], None] = lambda: None,
    ) -> None:
        self.trial, self.prunes, self.outer, self.stop, self.tick = trial, prunes, outer, stop, tick
        self.pruned = False

    def progress(self, step: int, total: int, loss: float, val_loss: float | None) -> None:
        self.tick()
        if self.outer is not None:
            self.outer.progress(step, total, loss, val_loss)
        if val_loss is None or not self.prunes or not math.isfinite(val_loss):
            return
        self.trial.report(float(val_loss), int(step))
        if self.trial.should_prune():
            log.info(
                "trial %d pruned at update %d (val loss %.4f)", self.trial.number, step, val_loss
            )
            self.pruned = True

    def should_stop(self) -> bool:
        return self.pruned or self.stop() or bool(self.outer and self.outer.should_stop())


def sweep_id(recipe: Recipe) -> str:
    """The id of a recipe's sweep: its name and a hash of the whole recipe, so the same recipe
    finds its sweep again (to resume) and a changed one starts its own."""
    text = json.dumps(recipe.to_dict(), sort_keys=True, default=str)
    return f"sweep-{recipe.name}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def new_sweep_id(recipe: Recipe) -> str:
    """A fresh id (the jobs API: every submitted sweep is its own)."""
    return f"sweep-{recipe.name}-{secrets.token_hex(4)}"


def baseline_values(recipe: Recipe, spec: SweepSpec) -> dict[str, Any]:
    data = recipe.to_dict()
    return {path: get_path(data, path) for path in spec.space}


def objective_value(metrics: dict[str, Any], objective: str) -> float | None:
    """A trained trial's objective from its record's metrics (None when it has none)."""
    if objective == "val_loss":  # the saved weights': the best ones when early stopping kept them
        value = metrics.get("best_val_loss" if metrics.get("stopped_early") else "val_loss")
        value = metrics.get("best_val_loss") if value is None else value
    elif objective == "recall@10":
        value = metrics.get("recall@10_after")
    else:
        value = (metrics.get("reward") or {}).get("accuracy")
    if not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _suggest(trial: Any, path: str, param: SweepParam) -> Any:
    if param.type == "categorical":
        return trial.suggest_categorical(path, param.choices)
    assert param.low is not None and param.high is not None
    if param.type == "int":
        step = int(param.step or 1)
        return trial.suggest_int(path, int(param.low), int(param.high), step=step, log=param.log)
    log_scale = param.type == "log_uniform"
    return trial.suggest_float(path, param.low, param.high, step=param.step, log=log_scale)


def _sampler(spec: SweepSpec, done: int) -> Any:
    """TPE, its random start a third of the trials (2 to 10): Optuna's 10 would make a short
    sweep a random search. The seed moves with the trials done, so a resumed sweep does not
    propose again what its first run did."""
    import optuna

    startup = min(10, max(2, spec.trials // 3))
    return optuna.samplers.TPESampler(seed=spec.seed + done, n_startup_trials=startup)


def _pruner(spec: SweepSpec) -> Any:
    import optuna

    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto")
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


class Sweep:
    """One sweep's folder and study; ``run`` drives it to its trial count or time budget."""

    def __init__(self, folder: Path, recipe: Recipe) -> None:
        assert recipe.sweep is not None
        self.folder, self.recipe, self.spec = folder, recipe, recipe.sweep
        self.id = folder.name
        self._score: Callable[[Any], float] | None = None
        self._storage: Any = None

    # ---- opening ------------------------------------------------------------------------
    @classmethod
    def open(
        cls, root: Path, recipe: Recipe, *, sweep_id_: str | None = None, fresh: bool = False
    ) -> Sweep:
        """The sweep of ``recipe`` under ``root`` (made when new; ``fresh`` starts it over).
        ``ValueError`` when the recipe has no sweep block."""
        if recipe.sweep is None:
            raise ValueError("sweep: the recipe has no sweep block (sweep.space, sweep.trials)")
        folder = Path(root) / (sweep_id_ or sweep_id(recipe))
        if fresh and folder.exists():
            with _driving(folder):
                shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / RECIPE_FILE).is_file():
            atomic_write_text(folder / RECIPE_FILE, json.dumps(recipe.to_dict(), indent=2))
        return cls(folder, recipe)

    @classmethod
    def load(cls, folder: Path) -> Sweep:
        """A sweep from its folder (the recipe it was made with)."""
        data = json.loads((folder / RECIPE_FILE).read_text(encoding="utf-8"))
        return cls(folder, recipe_from_dict(data))

    def _study(self, create: bool = True) -> Any:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # this module says what it does
        if not create and not (self.folder / STUDY_FILE).is_file():
            raise KeyError(self.id)
        with _STORAGE_LOCK:  # two threads making the tables at once collide
            if self._storage is None:  # one engine per sweep, however often it is read
                self._storage = optuna.storages.RDBStorage(
                    f"sqlite:///{self.folder / STUDY_FILE}",
                    engine_kwargs={"connect_args": {"timeout": 30}},
                )
            storage = self._storage
        if not create:
            return optuna.load_study(study_name=self.id, storage=storage)
        study = optuna.create_study(
            study_name=self.id,
            storage=storage,
            direction=self.spec.direction,  # type: ignore[arg-type]
            pruner=_pruner(self.spec),
            load_if_exists=True,
        )
        done = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
        study.sampler = _sampler(self.spec, done)
        if (
            "run" not in study.user_attrs
        ):  # tells this study's records from an earlier --fresh one's
            study.set_user_attr("run", secrets.token_hex(4))
            if self.spec.baseline:
                study.enqueue_trial(
                    baseline_values(self.recipe, self.spec), user_attrs={"baseline": True}
                )
        return study

    # ---- running ------------------------------------------------------------------------
    def run(
        self,
        run_trial: RunTrial,
        *,
        hooks: Hooks | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        on_trial: Callable[[dict[str, Any]], None] | None = None,
        score: Callable[[Any], float] | None = None,
    ) -> dict[str, Any]:
        """Run trials until ``sweep.trials`` have finished or ``sweep.timeout_s`` is spent (a
        trial running then finishes); return the summary. ``score(record)`` is a trained
        trial's objective for ``objective: eval`` (the caller runs the eval). ``Cancelled``
        when ``should_stop`` says so (the running trial stops, the sweep is marked
        cancelled); ``SweepBusy`` when another process runs it."""
        from optuna.trial import Trial, TrialState

        if self.spec.objective == "eval" and score is None:
            raise ValueError("sweep.objective: eval needs a way to run the eval (score)")
        self._score = score
        with _driving(self.folder):
            study = self._study()
            self._clock = (time.monotonic(), float(study.user_attrs.get("spent_s", 0.0)))
            self._saved = time.monotonic()
            failures = 0
            self._write(study, "running")
            try:
                left = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                pending = [Trial(study, t._trial_id) for t in left]  # a killed run's trials
                while True:
                    if should_stop():
                        raise Cancelled(f"sweep {self.id} cancelled")
                    if pending:
                        trial = pending.pop(0)
                    else:
                        done = [
                            t for t in study.get_trials(deepcopy=False) if t.state.is_finished()
                        ]
                        elapsed = self._spent()
                        if len(done) >= self.spec.trials:
                            break
                        if self.spec.timeout_s is not None and elapsed >= self.spec.timeout_s:
                            log.info(
                                "sweep %s: time budget spent after %d trials", self.id, len(done)
                            )
                            break
                        trial = study.ask()
                    try:
                        ok = self._trial(study, trial, run_trial, hooks, should_stop)
                    finally:
                        study.set_user_attr("spent_s", self._spent())
                    failures = 0 if ok else failures + 1
                    self._write(study, "running")
                    if on_trial is not None:
                        on_trial(self.summary(study))
                    if failures >= MAX_FAILURES:
                        error = study.trials[trial.number].user_attrs.get("error", "failed")
                        raise RuntimeError(
                            f"{MAX_FAILURES} trials failed in a row; the last: {error}"
                        )
            except Cancelled:
                for left_over in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    study.tell(left_over.number, state=TrialState.FAIL)  # never to be resumed
                self._write(study, "cancelled")
                raise
            except (Interrupted, KeyboardInterrupt):  # stays running: the next run resumes it
                study.set_user_attr("spent_s", self._spent())
                raise
            except BaseException as exc:
                self._write(
                    study, "failed", error=self._client_error(f"{type(exc).__name__}: {exc}")
                )
                raise
            summary = self._write(study, "succeeded")
        return summary

    def _client_error(self, error: str) -> str:
        """One line a client may read: no server paths (the data dir's made relative)."""
        from tuner.jobstore import client_error

        return client_error(error, self.folder.parent.parent) or "failed"

    def _spent(self) -> float:
        """Seconds this sweep has run, over all its runs (what ``timeout_s`` counts)."""
        began, before = self._clock
        return before + time.monotonic() - began

    def _tick(self, study: Any) -> None:
        """Save the time spent now and then while a trial trains, so a kill loses little."""
        if time.monotonic() - self._saved >= SAVE_SPENT_S:
            study.set_user_attr("spent_s", self._spent())
            self._saved = time.monotonic()

    def _trial(
        self,
        study: Any,
        trial: Any,
        run_trial: RunTrial,
        hooks: Hooks | None,
        should_stop: Callable[[], bool],
    ) -> bool:
        """Train one trial and tell the study; False when it failed."""
        from optuna.trial import TrialState

        params = {path: _suggest(trial, path, p) for path, p in self.spec.space.items()}
        baseline = bool(trial.user_attrs.get("baseline"))
        try:
            recipe = with_values(self.recipe, params)
        except ValueError as exc:  # a combination the recipe refuses (each end alone passed)
            return self._failed(study, trial, str(exc))
        if recipe.component == "retriever":  # the best is named, never switched to
            recipe.retriever.activate = False
        same = _same_as(study, trial, params)
        if same is not None:  # TPE proposes a trained combination again: its value stands
            log.info("sweep %s: trial %d repeats trial %d", self.id, trial.number, same.number)
            trial.set_user_attr("repeats", same.number)
            trial.set_user_attr("adapter", same.user_attrs.get("adapter"))
            study.tell(trial, same.value)
            return True
        run = study.user_attrs.get("run")
        info = TrialInfo(
            sweep={
                "id": self.id,
                "run": run,
                "trial": trial.number,
                "params": params,
                "baseline": baseline,
            },
            resume=trial.user_attrs.get("key"),
            started=lambda key: trial.set_user_attr("key", key),
        )
        prunes = self.spec.objective == "val_loss" and self.spec.pruner != "none"
        trial_hooks = _TrialHooks(trial, prunes, hooks, should_stop, lambda: self._tick(study))
        began = time.monotonic()
        log.info("sweep %s: trial %d %s", self.id, trial.number, params)
        try:
            record = run_trial(recipe, info, trial_hooks)
        except Cancelled:
            trial.set_user_attr("seconds", round(time.monotonic() - began, 1))
            if trial_hooks.pruned:
                study.tell(trial, state=TrialState.PRUNED)
                return True
            trial.set_user_attr("error", "cancelled")
            study.tell(trial, state=TrialState.FAIL)
            raise
        except Exception as exc:  # noqa: BLE001 - one trial failing is that trial's result
            log.warning("sweep %s: trial %d failed: %s", self.id, trial.number, exc)
            trial.set_user_attr("seconds", round(time.monotonic() - began, 1))
            return self._failed(study, trial, f"{type(exc).__name__}: {exc}")
        trial.set_user_attr("seconds", round(time.monotonic() - began, 1))
        trial.set_user_attr("adapter", record.id)
        if self._score is not None and self.spec.objective == "eval":
            try:
                value: float | None = float(self._score(record))
            except Exception as exc:  # noqa: BLE001 - the trial's eval failing fails the trial
                return self._failed(
                    study, trial, f"eval of {record.id}: {type(exc).__name__}: {exc}"
                )
        else:
            value = objective_value(record.metrics, self.spec.objective)
        if value is None or not math.isfinite(value):
            return self._failed(study, trial, f"{record.id} has no {self.spec.objective}")
        study.tell(trial, value)
        log.info(
            "sweep %s: trial %d %s = %.4f (%s)",
            self.id,
            trial.number,
            self.spec.objective,
            value,
            record.id,
        )
        return True

    def _failed(self, study: Any, trial: Any, error: str) -> bool:
        from optuna.trial import TrialState

        trial.set_user_attr("error", self._client_error(error))
        study.tell(trial, state=TrialState.FAIL)
        return False

    # ---- reading ------------------------------------------------------------------------
    def summary(self, study: Any = None, state: str | None = None) -> dict[str, Any]:
        """What the sweep has done: every trial, the best, the baseline; read from the study."""
        if study is None:
            try:
                study = self._study(create=False)
            except KeyError:  # no study yet: its driver has not started (or is making it)
                return self._head(state or self.state(), [])
        trials = [_trial_row(t) for t in study.get_trials(deepcopy=False)]
        out = self._head(state or self.state(), trials)
        done = [t for t in trials if t["state"] == "complete"]
        if done:
            pick = min if self.spec.direction == "minimize" else max
            out["best"] = pick(done, key=lambda t: t["value"])
        out["baseline"] = next((t for t in trials if t["baseline"]), None)
        out["spent_s"] = round(float(study.user_attrs.get("spent_s", 0.0)), 1)
        return out

    def _head(self, state: str, trials: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.recipe.name,
            "component": self.recipe.component,
            "method": self.recipe.method,
            "state": state,
            "objective": self.spec.objective,
            "direction": self.spec.direction,
            "planned_trials": self.spec.trials,
            "timeout_s": self.spec.timeout_s,
            "space": {k: _param_dict(v) for k, v in self.spec.space.items()},
            "defaults": baseline_values(self.recipe, self.spec),
            "trials": trials,
            "best": None,
            "baseline": None,
            "spent_s": 0.0,
        }

    def state(self) -> str:
        """queued | running | succeeded | failed | cancelled, as the last driver left it."""
        path = self.folder / SUMMARY_FILE
        if not path.is_file():
            return "queued"
        return str(json.loads(path.read_text(encoding="utf-8")).get("state", "queued"))

    def _write(self, study: Any, state: str, error: str | None = None) -> dict[str, Any]:
        summary = self.summary(study, state)
        summary["error"] = error
        if state in ("succeeded", "cancelled", "failed") and summary["trials"]:
            from tuner.sweep_report import write_report

            try:
                summary["report"] = write_report(study, summary, self.folder)
            except Exception:  # noqa: BLE001 - a failed plot never loses the sweep's results
                log.exception("sweep %s: the report could not be written", self.id)
        atomic_write_text(self.folder / SUMMARY_FILE, json.dumps(summary, indent=2, default=str))
        return summary


def _same_as(study: Any, trial: Any, params: dict[str, Any]) -> Any:
    """A complete trial (not this one) that trained exactly ``params``, or None."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.number != trial.number and t.params == params:
            return t
    return None


def _trial_row(t: Any) -> dict[str, Any]:
    return {
        "number": t.number,
        "state": t.state.name.lower(),
        "params": dict(t.params),
        "value": t.value if t.state.name == "COMPLETE" else None,
        "adapter": t.user_attrs.get("adapter"),
        "seconds": t.user_attrs.get("seconds"),
        "baseline": bool(t.user_attrs.get("baseline")),
        "error": t.user_attrs.get("error"),
        "key": t.user_attrs.get("key"),
        "repeats": t.user_attrs.get("repeats"),
        "last_update": max(t.intermediate_values, default=None),
    }


def _param_dict(param: SweepParam) -> dict[str, Any]:
    return {k: v for k, v in vars(param).items() if v is not None and v is not False}


@contextlib.contextmanager
def _driving(folder: Path) -> Iterator[None]:
    """Hold the sweep's driver lock: one process runs a sweep at a time."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / "driver.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SweepBusy(f"sweep {folder.name} is being run by another process") from None
        yield
    finally:
        os.close(fd)

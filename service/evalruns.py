"""Evaluation runs as jobs: the run's spec, its preparation here, and the runner that starts
``python -m eval.worker`` for it.

The service never imports ``eval``: a run is a job of ``tuner.jobs.JobRunner`` kept under
``DATA_DIR/evals/`` (``jobs.db`` and one folder per run), whose worker command is the eval
worker. The worker cannot open the live index (this process holds its lock), so ``prepare`` runs
here, in the runner's validation thread: it copies the uploaded file to ``dataset.jsonl`` and,
for plain question/answer rows, asks the live index every question and writes
``retrieved.jsonl`` (one line per question, in file order:
``{"row", "question", "seconds", "hits": [citation, ...]}``). SQuAD-style rows carry their
contexts, so the worker indexes them itself in a fresh temporary index. ``prepare`` then
rewrites the run's ``recipe.json`` with the ``eval.config.EvalOptions`` the worker runs:
``dataset``/``retrieved`` relative to the run folder, and ``live``. ``served`` is what a client
reads of a run's folder: its paths relative to the run folder or the data dir, a model folder
by its last part (runs recorded before the harness wrote relative names hold absolute ones).

Knows nothing of HTTP; the route (``service.routes.evals``) checks what it can against this
service (files, adapters, limits) before submitting.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from service.loading import shared_state
from service.pipeline import MODES, citation
from tuner.durable import atomic_write_lines, atomic_write_text
from tuner.jobs import JobRunner
from tuner.layout import EVALS
from tuner.prepare import FILE_ID

if TYPE_CHECKING:
    from service.settings import Settings

# The modes a run compares: the service's answer modes and the in-context ones only the harness
# answers (it holds the demonstrations; ``eval.config.MODES``, which the service never imports).
RUN_MODES = ("base", "icl", "rag", "rag-icl", "ft", "hybrid")
SHOTS_FROM = ("auto", "train", "synth")  # as eval.config names them
SHOT_CHOICES = ("similar", "random")
SHOTS_MAX = 32
OPTIONS = (  # what a client may set; never a path, never an import string (judge)
    "modes",
    "shots",
    "shots_from",
    "shot_choice",
    "k",
    "depth",
    "limit",
    "max_new_tokens",
    "seed",
    "resamples",
    "ft_adapter",
    "hybrid_adapter",
    "embedder_adapter",
    "probes",
)
SEARCH_MODE = "hybrid"  # what the harness asks a fresh index, so live and fresh runs compare
CANCEL_CHECK_EVERY = 25  # questions between looks at whether the run was cancelled
SHOWN_PROBLEMS = 100  # bad dataset lines in a 422's details, as POST /v1/files lists them
NAMED_PROBLEMS = 8  # bad dataset lines named in the message (a failed run's one-line error)


@dataclass(frozen=True)
class EvalSpec:
    """An eval run as submitted: an uploaded file and the options (a ``tuner.jobstore.JobSpec``)."""

    file_id: str
    options: dict[str, Any] = field(default_factory=dict)
    name: str = "eval"

    def __post_init__(self) -> None:
        if not isinstance(self.file_id, str) or not FILE_ID.fullmatch(self.file_id):
            raise ValueError(f"dataset.file_id: not an uploaded file's id: {self.file_id!r}")
        check_options(self.options)

    @property
    def method(self) -> str:
        return "+".join(self.options.get("modes") or tuple(MODES))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "file_id": self.file_id, "options": dict(self.options)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> EvalSpec:
        unknown = sorted(set(raw) - {"name", "file_id", "options"})
        if unknown:
            raise ValueError(f"unknown eval run fields: {', '.join(unknown)}")
        return cls(raw.get("file_id"), dict(raw.get("options") or {}), raw.get("name") or "eval")  # type: ignore[arg-type]


def check_options(options: dict[str, Any]) -> None:
    """The checks the service can make without ``eval``; ``ValueError`` naming the field."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown eval options: {', '.join(unknown)}")
    modes = options.get("modes", list(MODES))
    if not isinstance(modes, list | tuple) or not modes or any(m not in RUN_MODES for m in modes):
        raise ValueError(f"modes: choose from {', '.join(RUN_MODES)}; got {modes!r}")
    if len(set(modes)) != len(modes):
        raise ValueError(f"modes: each mode once; got {list(modes)}")
    for name, least in (("k", 1), ("depth", 1), ("max_new_tokens", 1), ("resamples", 100)):
        _int_at_least(options, name, least)
    if options.get("limit") is not None:
        _int_at_least(options, "limit", 1)
    if "seed" in options and not _is_int(options["seed"]):
        raise ValueError(f"seed: an integer, got {options['seed']!r}")
    if options.get("depth", 20) < options.get("k", 3):
        raise ValueError(f"depth: must be >= k ({options.get('k', 3)}), got {options['depth']}")
    for name in ("ft_adapter", "hybrid_adapter", "embedder_adapter"):
        if options.get(name) is not None and not isinstance(options[name], str):
            raise ValueError(f"{name}: an adapter id, got {options[name]!r}")
    shots = options.get("shots", 3)
    if not (_is_int(shots) and 1 <= shots <= SHOTS_MAX):
        raise ValueError(f"shots: an integer in [1, {SHOTS_MAX}], got {options['shots']!r}")
    for name, allowed in (("shots_from", SHOTS_FROM), ("shot_choice", SHOT_CHOICES)):
        if name in options and options[name] not in allowed:
            raise ValueError(f"{name}: choose from {', '.join(allowed)}; got {options[name]!r}")
    if not isinstance(options.get("probes", True), bool):
        raise ValueError(f"probes: true or false, got {options['probes']!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_at_least(options: dict[str, Any], name: str, least: int) -> None:
    if name in options and not (_is_int(options[name]) and options[name] >= least):
        raise ValueError(f"{name}: must be an integer >= {least}, got {options[name]!r}")


# ---- preparation (this process) -------------------------------------------------------------
class BadDataset(ValueError):
    """Every bad line of a run's dataset, as (line number, reason): the message counts them and
    names the first ``NAMED_PROBLEMS`` (a failed run's error is this one line), ``details()``
    lists the first ``SHOWN_PROBLEMS`` as ``POST /v1/files`` does."""

    def __init__(self, file: str, problems: Sequence[tuple[int, str]]) -> None:
        self.file, self.problems = file, list(problems)
        lines = "; ".join(f"line {n}: {why}" for n, why in self.problems[:NAMED_PROBLEMS])
        more = len(self.problems) - NAMED_PROBLEMS
        count = f"{len(self.problems)} bad line{'s' if len(self.problems) > 1 else ''}"
        super().__init__(
            f"dataset {file}: {count}: {lines}" + (f"; {more} more" if more > 0 else "")
        )

    def details(self) -> list[dict[str, Any]]:
        shown = self.problems[:SHOWN_PROBLEMS]
        return [{"file": self.file, "line": n, "reason": why} for n, why in shown]


def read_rows(path: Path, file: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) of every non-empty line of ``path`` (uploaded file ``file``);
    ``BadDataset`` listing every line that is not a JSON object."""
    from tuner.data import jsonl_records

    rows, problems = jsonl_records(path)
    if problems:
        raise BadDataset(file, problems)
    if not rows:
        raise BadDataset(file, [(1, "the file holds no records")])
    return rows


def questions_of(rows: Sequence[tuple[int, dict[str, Any]]], file: str) -> list[str]:
    """Every row's question; ``BadDataset`` listing every line without one."""
    out, problems = [], []
    for number, record in rows:
        question = record.get("question")
        if not isinstance(question, str) or not question.strip():
            problems.append((number, "'question' must be a non-empty string"))
        else:
            out.append(question)
    if problems:
        raise BadDataset(file, problems)
    return out


def is_live(rows: Sequence[tuple[int, dict[str, Any]]]) -> bool:
    """Plain question/answer rows are asked against the live index; SQuAD-style rows carry
    their contexts and get a fresh index of their own."""
    return "context" not in rows[0][1]


def check_dataset(path: Path, file: str) -> None:
    """What ``prepare_run`` reads of uploaded file ``file``, checked before a run is submitted;
    ``BadDataset`` listing every bad line."""
    rows = read_rows(path, file)
    if is_live(rows):
        questions_of(rows, file)


def search_lines(
    retriever: Any, questions: Sequence[str], depth: int, reranker: Any = None
) -> Iterator[str]:
    """One ``retrieved.jsonl`` line per question, in order, timed with ``perf_counter``."""
    for row, question in enumerate(questions):
        t = time.perf_counter()
        hits = retriever.search(question, k=depth, mode=SEARCH_MODE, reranker=reranker)
        seconds = time.perf_counter() - t
        found = [{**citation(h), "score": float(h.score)} for h in hits]
        line = {"row": row, "question": question, "seconds": seconds, "hits": found}
        yield json.dumps(line, ensure_ascii=False) + "\n"


class Stopped(ValueError):
    """The run was cancelled while it was being prepared."""


def prepare_run(
    spec: EvalSpec,
    run_dir: Path,
    *,
    files_dir: Path,
    retriever: Any,
    reranker: Any = None,
    still_wanted: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Write the run's ``dataset.jsonl`` (and ``retrieved.jsonl`` for a live run) and the final
    ``recipe.json``; return what was prepared. ``still_wanted()`` false stops a live search."""
    source = files_dir / f"{spec.file_id}.jsonl"
    if not source.is_file():
        raise ValueError(f"dataset: no uploaded file {spec.file_id!r} (POST /v1/files)")
    rows = read_rows(source, spec.file_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, run_dir / "dataset.jsonl")
    options = {**spec.options, "dataset": "dataset.jsonl", "live": False}
    if is_live(rows):
        questions = questions_of(rows, spec.file_id)[: spec.options.get("limit") or None]
        lines = search_lines(retriever, questions, spec.options.get("depth", 20), reranker)
        atomic_write_lines(run_dir / "retrieved.jsonl", _stoppable(lines, still_wanted))
        options.update(live=True, retrieved="retrieved.jsonl")
    recipe = {**spec.to_dict(), "options": options}
    atomic_write_text(run_dir / "recipe.json", json.dumps(recipe, indent=2, ensure_ascii=False))
    return {"rows": len(rows), "live": options["live"]}


def _stoppable(lines: Iterator[str], still_wanted: Callable[[], bool] | None) -> Iterator[str]:
    for i, line in enumerate(lines):
        if still_wanted is not None and i % CANCEL_CHECK_EVERY == 0 and not still_wanted():
            raise Stopped("the run was cancelled while its questions were searched")
        yield line


# ---- serving (what a client reads of a run's folder) ------------------------------------------
def server_paths(run_dir: Path, settings: Settings) -> list[tuple[str, str, str]]:
    """(server folder, what a client reads for a path below it, for the folder alone): the run
    folder's paths relative to it, the data dir's relative to that, a model configured by folder
    as its last part (``tuner.jobstore.hide_folders`` replaces them, longest first, only where
    they stand as whole paths)."""
    folders = [(run_dir.resolve().as_posix(), "", "."), (settings.data_dir.as_posix(), "", ".")]
    for model in (settings.generator, settings.embedder):
        if PurePath(str(model)).is_absolute():
            name = PurePath(str(model)).name
            folders.append((str(model), f"{name}/", name))
    return folders


def served(value: Any, paths: Sequence[tuple[str, str, str]]) -> Any:
    """``value`` (text, or JSON data read from a run's folder) with every server folder of
    ``paths`` replaced where it stands as a path."""
    from tuner.jobstore import hide_folders

    if isinstance(value, str):
        return hide_folders(value, paths)
    if isinstance(value, dict):
        return {served(k, paths): served(v, paths) for k, v in value.items()}
    if isinstance(value, list):
        return [served(v, paths) for v in value]
    return value


# ---- the runner ---------------------------------------------------------------------------
def worker_settings(settings: Settings) -> dict[str, Any]:
    """The settings the worker runs with: this service's, without keys or the address."""
    return settings.model_dump(  # type: ignore[no-any-return]
        mode="json", exclude={"api_keys", "host", "port", "auth_disabled"}
    )


def make_eval_runner(state: Any, **kwargs: Any) -> JobRunner:
    """The app's eval runner (``DATA_DIR/evals``); ``kwargs`` go to ``JobRunner`` (tests give a
    fake worker ``command``, ``env`` and a short ``poll_s``)."""
    runner: JobRunner

    def prepare(spec: EvalSpec, run_dir: Path) -> dict[str, Any]:
        return prepare_run(
            spec,
            run_dir,
            files_dir=state.settings.layout.files,
            retriever=state.retriever,
            reranker=state.reranker,
            still_wanted=lambda: runner.get(run_dir.name).state == "validating",
        )

    kwargs.setdefault("command", [sys.executable, "-m", "eval.worker"])
    runner = JobRunner(
        state.settings.data_dir,
        prepare,
        folder=EVALS,
        parse=EvalSpec.from_dict,
        options={"settings": worker_settings(state.settings)},
        database=shared_state(state.settings),
        lease_s=state.settings.database.job_lease_s,
        **kwargs,
    )
    return runner

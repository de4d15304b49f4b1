"""/v1/eval/runs: start evaluation runs as jobs, follow them, and serve their reports.

A run names an uploaded file (``POST /v1/files``), never a path: SQuAD-style rows (with
``context``) are indexed afresh by the worker, plain question/answer rows are asked against the
live index (``service.evalruns`` prepares that here). The worker writes ``report/`` in the run's
folder; ``GET .../report`` serves ``report.html``, ``report.md`` or ``metrics.json`` from it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from service.auth import Reader, Writer
from service.bounds import (
    EVAL_QUESTIONS_MAX,
    RESAMPLES_MAX,
    RESAMPLES_MIN,
    AdapterId,
    Body,
    BootstrapSeed,
    FileId,
    K,
    NewTokens,
    one_of,
)
from service.deps import State
from service.errors import ServiceError
from service.evalruns import (
    RUN_MODES,
    SHOT_CHOICES,
    SHOTS_FROM,
    SHOTS_MAX,
    BadDataset,
    check_dataset,
    served,
    server_paths,
)
from service.pipeline import ADAPTER_MODES, MODES
from service.state import AppState
from tuner.jobstore import Job, JobFinished, JobNotFound

router = APIRouter(prefix="/v1/eval/runs", tags=["evaluation"])
REPORTS = {  # format -> (file in the run's report folder, media type)
    "html": ("report.html", "text/html; charset=utf-8"),
    "md": ("report.md", "text/markdown; charset=utf-8"),
    "json": ("metrics.json", "application/json"),
}
HTML_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


class DatasetRef(Body):
    file_id: FileId = Field(description="an uploaded file's id (POST /v1/files)")


class RunBody(Body):
    dataset: FileId | DatasetRef = Field(description="a file id, or {file_id}")
    modes: list[one_of(RUN_MODES)] | None = Field(  # type: ignore[valid-type]
        None,
        min_length=1,
        max_length=len(RUN_MODES),
        description="of base, icl, rag, rag-icl, ft, hybrid, each once (icl and rag-icl: base "
        "and rag with demonstrations before the question); default: base, rag, ft, hybrid "
        "given an adapter, else base, rag",
    )
    shots: int = Field(3, ge=1, le=SHOTS_MAX, description="icl, rag-icl: demonstrations")
    shots_from: one_of(SHOTS_FROM) = Field(  # type: ignore[valid-type]
        "auto",
        description="icl, rag-icl: the dataset's training split (train), questions synthesised "
        "from the run's index (synth: a SQuAD-style file's own index; a live run has none "
        "the worker may open), or train when the dataset has one (auto)",
    )
    shot_choice: one_of(SHOT_CHOICES) = Field(  # type: ignore[valid-type]
        "similar", description="icl, rag-icl: the nearest demonstrations, or a seeded sample"
    )
    k: K = Field(3, description="passages in the prompt")
    depth: K = Field(20, description="passages retrieved for recall@k (>= k, <= limits.max_k)")
    limit: int | None = Field(
        None, ge=1, le=EVAL_QUESTIONS_MAX, description="only the first N questions"
    )
    max_new_tokens: NewTokens = Field(
        64, description="greedy decoding budget per answer (<= limits.max_new_tokens)"
    )
    seed: BootstrapSeed = Field(0, description="bootstrap seed")
    resamples: int = Field(
        10_000, ge=RESAMPLES_MIN, le=RESAMPLES_MAX, description="bootstrap resamples"
    )
    ft_adapter: AdapterId | None = Field(None, description="adapter id for ft (default: promoted)")
    hybrid_adapter: AdapterId | None = Field(None, description="adapter id for hybrid")
    embedder_adapter: AdapterId | None = Field(
        None, description="fine-tuned embedder id for a SQuAD-style run's fresh index"
    )
    probes: bool = Field(True, description="run the forgetting and injection probes")


class EvalProgress(BaseModel):
    model_config = ConfigDict(extra="forbid")
    done: int
    total: int | None


class RunCreated(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    state: str


class RunSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    file_id: str | None
    modes: list[str]
    state: str
    progress: EvalProgress
    error: str | None
    cancel_requested: bool
    created: float
    started: float | None
    finished: float | None


class RunOut(RunSummary):
    options: dict[str, Any]
    metrics: dict[str, Any] | None = Field(description="report/metrics.json once succeeded")


class RunsOut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    runs: list[RunSummary]


def _summary(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "file_id": job.recipe.get("file_id"),
        "modes": job.method.split("+"),
        "state": job.state,
        "progress": EvalProgress(done=job.step, total=job.total),
        "error": job.error,
        "cancel_requested": job.cancel_requested,
        "created": job.created,
        "started": job.started,
        "finished": job.finished,
    }


def _metrics(run_dir: Path, state: AppState) -> dict[str, Any] | None:
    """The run's ``report/metrics.json`` as a client reads it (``service.evalruns.served``)."""
    try:
        raw = json.loads((run_dir / "report" / "metrics.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return served(raw, server_paths(run_dir, state.settings)) if isinstance(raw, dict) else None


def _out(job: Job, run_dir: Path, state: AppState) -> RunOut:
    metrics = _metrics(run_dir, state) if job.state == "succeeded" else None
    options = served(job.recipe.get("options", {}), server_paths(run_dir, state.settings))
    return RunOut(**_summary(job), options=options, metrics=metrics)


@contextmanager
def _domain() -> Iterator[None]:
    try:
        yield
    except JobNotFound as exc:
        raise ServiceError(404, "eval_run_not_found", f"no eval run {exc}") from None
    except JobFinished as exc:
        raise ServiceError(409, "eval_run_finished", str(exc).replace("job", "eval run")) from None


def spec_dict(body: RunBody, state: AppState) -> dict[str, Any]:
    """The run's spec; ``ValueError`` for what this service can tell is wrong."""
    file_id = body.dataset if isinstance(body.dataset, str) else body.dataset.file_id
    path = state.settings.layout.files / f"{file_id}.jsonl"
    if not path.is_file():
        raise ValueError(f"dataset: no uploaded file {file_id!r} (POST /v1/files)")
    check_dataset(path, file_id)
    limits = state.settings.limits
    if body.depth > limits.max_k:
        raise ValueError(f"depth: at most {limits.max_k} (the service's max_k), got {body.depth}")
    if body.max_new_tokens > limits.max_new_tokens:
        raise ValueError(
            f"max_new_tokens: at most {limits.max_new_tokens}, got {body.max_new_tokens}"
        )
    options = body.model_dump(exclude={"dataset"})
    options["modes"] = body.modes if body.modes is not None else _default_modes(body, state)
    _check_adapters(options, state)
    return {"name": "eval", "file_id": file_id, "options": options}


def _default_modes(body: RunBody, state: AppState) -> list[str]:
    has_adapter = body.ft_adapter is not None or state.registry().promoted() is not None
    return [m.name for m in MODES.values() if has_adapter or not m.uses_adapter]


def _check_adapters(options: dict[str, Any], state: AppState) -> None:
    """Named adapters exist; ft and hybrid have one (named or promoted)."""
    from tuner.registry import RecordNotFound, RegistryError

    registry = state.registry()
    for name in ("ft_adapter", "hybrid_adapter", "embedder_adapter"):
        if options.get(name) is None:
            continue
        try:
            registry.get(options[name])
        except (RecordNotFound, RegistryError) as exc:
            raise ValueError(f"{name}: no adapter {options[name]!r} ({exc})") from None
    named = {"ft": options["ft_adapter"], "hybrid": options["hybrid_adapter"]}
    named["hybrid"] = named["hybrid"] or named["ft"]
    needs = [m for m in options["modes"] if m in ADAPTER_MODES and named[m] is None]
    if needs and registry.promoted() is None:
        raise ValueError(
            f"modes {', '.join(needs)}: a fine-tuned adapter is needed: name one "
            "(ft_adapter, hybrid_adapter) or promote one (POST /v1/adapters/{id}/promote), "
            "or leave those modes out"
        )


@router.post("", status_code=202)
def create(body: RunBody, state: State, _: Writer) -> RunCreated:
    """Start an evaluation run: checked now (422); its questions are searched while it is
    validating, then the worker evaluates every mode on them."""
    try:
        run_id = state.eval_runs().submit(spec_dict(body, state))
    except BadDataset as exc:
        raise ServiceError(422, "invalid_eval_run", str(exc), exc.details()) from None
    except ValueError as exc:
        raise ServiceError(422, "invalid_eval_run", str(exc)) from None
    return RunCreated(id=run_id, state=state.eval_runs().get(run_id).state)


@router.get("")
def list_runs(state: State, _: Reader) -> RunsOut:
    return RunsOut(runs=[RunSummary(**_summary(j)) for j in state.eval_runs().list()])


@router.get("/{run_id}")
def get(run_id: str, state: State, _: Reader) -> RunOut:
    with _domain():
        job = state.eval_runs().get(run_id)
    return _out(job, state.eval_runs().job_dir(job.id), state)


@router.get("/{run_id}/report", response_class=Response)
def report(
    run_id: str, state: State, _: Reader, format: Literal["html", "md", "json"] = "html"
) -> Response:
    """The run's report: ``html`` (self-contained, the default), ``md``, or ``json``
    (metrics.json); 409 until the run has succeeded."""
    with _domain():
        job = state.eval_runs().get(run_id)
    if job.state != "succeeded":
        raise ServiceError(
            409, "eval_run_not_succeeded", f"eval run {run_id} is {job.state}; no report"
        )
    name, media = REPORTS[format]
    run_dir = state.eval_runs().job_dir(job.id)
    path = run_dir / "report" / name
    if not path.is_file():
        raise ServiceError(404, "report_not_found", f"eval run {run_id} has no {name}")
    headers = {"X-Content-Type-Options": "nosniff"}
    if format == "html":
        headers["Content-Security-Policy"] = HTML_POLICY
    if format == "json":
        metrics = _metrics(run_dir, state)
        if metrics is None:
            raise ServiceError(404, "report_not_found", f"eval run {run_id} has no readable {name}")
        body = json.dumps(metrics, ensure_ascii=False).encode()
    else:
        text = path.read_text("utf-8", errors="replace")
        body = served(text, server_paths(run_dir, state.settings)).encode()
    return Response(body, media_type=media, headers=headers)


@router.post("/{run_id}/cancel", status_code=202)
def cancel(run_id: str, state: State, _: Writer) -> RunOut:
    """Cancel a run: at once before its worker starts, within seconds while it evaluates."""
    with _domain():
        job = state.eval_runs().cancel(run_id)
    return _out(job, state.eval_runs().job_dir(job.id), state)

"""/v1/tune/jobs: start, list, inspect and cancel fine-tuning jobs (tuner.jobs does the work).

A job body names an uploaded file (``POST /v1/files``) or synthetic data from the live index;
never a path on this machine or a model folder: the base model is the service's generator
(``component: "generator"``) or its embedder (``component: "retriever"``). A retriever job that
succeeds re-embeds the index with its result in the background and switches to it (unless
``retriever.activate`` is false), which needs the admin scope like promoting an adapter.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from service.auth import Reader, Writer
from service.deps import State
from service.errors import ServiceError
from service.state import AppState
from service.tuning import (
    activates,
    base_model,
    prepare_data,
    train_options,
    writes_with_model,
)
from tuner.config import Recipe, recipe_from_dict
from tuner.jobs import JobRunner
from tuner.jobstore import Job, JobFinished, JobNotFound

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/tune/jobs", tags=["tuning"])
FILE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class DatasetBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file_id: str | None = Field(None, description="an uploaded file's id")
    synthetic: dict[str, Any] | None = Field(None, description="tuner.config.SyntheticSpec")
    format: str = "auto"
    template: str = "chat"
    weight: float = 1.0


class JobBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    component: str = Field("generator", description="generator or retriever")
    method: str = "lora"
    dataset: str | DatasetBody = Field(description="a file id, or {synthetic: {...}}")
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    retriever: dict[str, Any] = Field(
        default_factory=dict, description="tuner.config.RetrieverTuning (component retriever)"
    )
    name: str | None = Field(None, description="the adapter's name; default <component>-<method>")
    parent: str | None = Field(None, description="an adapter id to continue from")


class Progress(BaseModel):
    model_config = ConfigDict(extra="forbid")
    step: int
    total: int | None


class JobCreated(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    state: str


class JobSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    name: str
    component: str
    method: str
    state: str
    progress: Progress
    eta_s: float | None
    error: str | None
    adapter: str | None
    cancel_requested: bool
    created: float
    started: float | None
    finished: float | None


class JobOut(JobSummary):
    loss_curve: list[list[float]]
    val_losses: list[list[float]]
    problems: list[list[Any]]
    attempts: int
    heartbeat: float | None


class JobsOut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    jobs: list[JobSummary]


def _out(job: Job, model: type[JobSummary] = JobOut) -> Any:
    fields = {k: getattr(job, k) for k in model.model_fields if k not in ("progress", "component")}
    component = job.recipe.get("component", "generator")
    return model(**fields, component=component, progress=Progress(step=job.step, total=job.total))


@contextmanager
def _domain() -> Iterator[None]:
    try:
        yield
    except JobNotFound as exc:
        raise ServiceError(404, "job_not_found", f"no job {exc}") from None
    except JobFinished as exc:
        raise ServiceError(409, "job_finished", str(exc)) from None


def recipe_dict(body: JobBody, state: AppState) -> dict[str, Any]:
    """The recipe a job body asks for; the base model is always the service's generator."""
    settings = state.settings
    ds = DatasetBody(file_id=body.dataset) if isinstance(body.dataset, str) else body.dataset
    known = ds.file_id is None or (
        FILE_ID.match(ds.file_id) is not None
        and (state.settings.layout.files / f"{ds.file_id}.jsonl").is_file()
    )
    if not known:
        raise ValueError(f"dataset: no uploaded file {ds.file_id!r} (POST /v1/files)")
    retriever = body.component == "retriever"
    if retriever and ds.synthetic is not None:
        ds.synthetic = {"kind": "pairs", **ds.synthetic}
    if body.retriever and not retriever:
        raise ValueError("retriever: settings for component retriever only")
    base = base_model(body.component, settings)
    recipe: dict[str, Any] = {
        "name": body.name or f"{body.component}-{body.method}",
        "method": body.method,
        "component": body.component,
        "base_model": base,
        "datasets": [ds.model_dump(exclude_none=True)],
        "hyperparameters": body.hyperparameters,
        "parent": body.parent,
    }
    if retriever:
        recipe["retriever"] = body.retriever
    return recipe


@router.post("", status_code=202)
def create(body: JobBody, state: State, who: Writer) -> JobCreated:
    """Start a job: the recipe is checked now (422), its data while the job is validating."""
    activates = body.component == "retriever" and body.retriever.get("activate", True)
    if activates and not who.allows("admin"):
        raise ServiceError(
            403,
            "forbidden",
            "a retriever job switches the index to its embedder, which needs the admin scope; "
            "set retriever.activate to false to only train it",
        )
    try:
        recipe = recipe_dict(body, state)
        job_id = state.tune_jobs().submit(recipe)
    except ValueError as exc:
        raise ServiceError(422, "invalid_recipe", str(exc)) from None
    return JobCreated(id=job_id, state=state.tune_jobs().get(job_id).state)


@router.get("")
def list_jobs(state: State, _: Reader) -> JobsOut:
    return JobsOut(jobs=[_out(j, JobSummary) for j in state.tune_jobs().list()])


@router.get("/{job_id}")
def get(job_id: str, state: State, _: Reader) -> JobOut:
    with _domain():
        return _out(state.tune_jobs().get(job_id))  # type: ignore[no-any-return]


@router.post("/{job_id}/cancel", status_code=202)
def cancel(job_id: str, state: State, _: Writer) -> JobOut:
    """Cancel a job: at once when it has not started, within seconds when it is training."""
    with _domain():
        return _out(state.tune_jobs().cancel(job_id))  # type: ignore[no-any-return]


def make_job_runner(state: AppState) -> JobRunner:
    """The app's runner: data prepared here (tokenizer, index, generator of this process),
    training in each job's worker process, activation back here (``service.tuning``)."""
    settings = state.settings

    def prepare(recipe: Recipe, job_dir: Path) -> Any:
        import copy

        from service.loading import generator_from_settings

        if recipe.component == "retriever":  # pairs and hard negatives from the live index
            return prepare_data(recipe, job_dir, settings, index=state.retriever)
        # This runs beside the engine: a tokenizer of its own (fast tokenizers are not
        # shareable across threads), and for model-written data a generator of its own (the
        # engine switches adapters on the shared one).
        assert state.generator is not None
        return prepare_data(
            recipe,
            job_dir,
            settings,
            index=state.retriever,
            tokenizer=copy.deepcopy(state.generator.tokenizer),
            generator=generator_from_settings(settings) if writes_with_model(recipe) else None,
        )

    def activate(job: Job) -> None:
        """A retriever job's embedder replaces the index's, re-embedded in the background."""
        if not job.adapter or not activates(recipe_from_dict(job.recipe)):
            return
        try:
            state.reindexer.start({"adapter": job.adapter}, reason=f"job {job.id}")
        except Exception as exc:  # noqa: BLE001 - e.g. another re-embedding runs; say so
            log.warning("job %s: not re-embedding with %s: %s", job.id, job.adapter, exc)

    options = train_options(settings)
    return JobRunner(settings.data_dir, prepare, options=options, on_success=activate)

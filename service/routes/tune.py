"""/v1/tune/jobs: start, list, inspect and cancel fine-tuning jobs (tuner.jobs does the work).

A job body names an uploaded file (``POST /v1/files``) or synthetic data from the live index;
never a path on this machine or a model folder: the base model is the service's generator
(``component: "generator"``) or its embedder (``component: "retriever"``). A retriever job that
succeeds re-embeds the index with its result in the background and switches to it (unless
``retriever.activate`` is false), which needs the admin scope like promoting an adapter.
What can be told at submit is a 422 then, not a job that fails later: a ``parent`` the registry
does not hold (or of another component or method), and an uploaded file whose recorded format
(``POST /v1/files`` records one) the dataset's template and format cannot read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from retriever.config import SEARCH_MODES
from service.auth import Reader, Writer
from service.bounds import AdapterId, Body, FileId, RegistryName, edge_model, one_of
from service.deps import State
from service.errors import ServiceError
from service.loading import shared_state
from service.state import AppState
from service.tuning import (
    activates,
    base_model,
    needs_answers,
    prepare_data,
    train_options,
    writes_with_model,
)
from tuner.config import (
    COMPONENTS,
    FORMATS,
    HYPERPARAMETER_BOUNDS,
    LORA_LIKE,
    METHODS,
    PREFERENCE_BOUNDS,
    PREFERENCE_METHODS,
    PROMOTED,
    RETRIEVER_BOUNDS,
    SCHEDULERS,
    SWEEP_BOUNDS,
    SWEEP_CHOICE_MAX_CHARS,
    SWEEP_CHOICES_MAX,
    SWEEP_EVAL_BOUNDS,
    SWEEP_EVAL_METRICS,
    SWEEP_EVAL_MODES,
    SWEEP_OBJECTIVES,
    SWEEP_PARAM_BOUNDS,
    SWEEP_PARAM_TYPES,
    SWEEP_PARAMS_MAX,
    SWEEP_PRUNERS,
    SYNTHETIC_BOUNDS,
    SYNTHETIC_KINDS,
    TARGET_MODULE_MAX_CHARS,
    TARGET_MODULES_MAX,
    TEMPLATES,
    WEIGHT_BOUNDS,
    WINDOW_MAX,
    FeedbackSpec,
    Hyperparameters,
    PreferenceTuning,
    Recipe,
    RetrieverTuning,
    SweepEval,
    SweepParam,
    SweepSpec,
    SyntheticSpec,
    recipe_from_dict,
)
from tuner.jobs import JobRunner
from tuner.jobstore import Job, JobFinished, JobNotFound

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/tune/jobs", tags=["tuning"])
ModuleName = Annotated[str, Field(min_length=1, max_length=TARGET_MODULE_MAX_CHARS)]
Rank = Annotated[int, Field(ge=0, le=WINDOW_MAX)]
# The request models of tuner.config's dataclasses, bounded from the tables they check.
HyperparametersBody = edge_model(
    Hyperparameters,
    HYPERPARAMETER_BOUNDS,
    {
        "scheduler": one_of(SCHEDULERS),
        "target_modules": ModuleName
        | Annotated[list[ModuleName], Field(min_length=1, max_length=TARGET_MODULES_MAX)]
        | None,
    },
)
SyntheticBody = edge_model(
    SyntheticSpec,
    SYNTHETIC_BOUNDS,
    {"kind": one_of(SYNTHETIC_KINDS), "generator": one_of(("extractive", "model"))},
)
PreferenceBody = edge_model(PreferenceTuning, PREFERENCE_BOUNDS)
RetrieverBody = edge_model(
    RetrieverTuning,
    RETRIEVER_BOUNDS,
    {"window": tuple[Rank, Rank], "mine_mode": one_of(SEARCH_MODES)},
)


FeedbackBody = edge_model(FeedbackSpec, {"since": {"ge": 0, "le": 1e11}})
Choice = (
    Annotated[str, Field(max_length=SWEEP_CHOICE_MAX_CHARS)]
    | Annotated[int, Field(ge=-(10**9), le=10**9)]
    | Annotated[float, Field(ge=-1e9, le=1e9)]
    | bool
    | None
)
SweepParamBody = edge_model(
    SweepParam,
    SWEEP_PARAM_BOUNDS,
    {
        "type": one_of(SWEEP_PARAM_TYPES),
        "choices": Annotated[list[Choice], Field(min_length=1, max_length=SWEEP_CHOICES_MAX)]
        | None,
    },
)
SweepKey = Annotated[str, Field(min_length=1, max_length=200)]
SweepEvalBody = edge_model(
    SweepEval,
    SWEEP_EVAL_BOUNDS,
    {
        "dataset": FileId,
        "metric": one_of(SWEEP_EVAL_METRICS),
        "mode": one_of(SWEEP_EVAL_MODES),
    },
)
SweepBody = edge_model(
    SweepSpec,
    SWEEP_BOUNDS,
    {
        "objective": one_of(tuple(SWEEP_OBJECTIVES)),
        "pruner": one_of(SWEEP_PRUNERS),
        "eval": SweepEvalBody | None,
        "space": Annotated[
            dict[SweepKey, SweepParamBody],  # type: ignore[valid-type]
            Field(min_length=1, max_length=SWEEP_PARAMS_MAX),
        ],
    },
)


class DatasetBody(Body):
    file_id: FileId | None = Field(None, description="an uploaded file's id")
    feedback: FeedbackBody | None = Field(  # type: ignore[valid-type]
        None,
        description="methods kto and dpo: the ratings users gave answers (the answer log), "
        "each prompt rebuilt as it was served",
    )
    synthetic: SyntheticBody | None = Field(  # type: ignore[valid-type]
        None,
        description="training data made from the documents in the live index instead of a "
        "file (kind qa, raft, closed_book; pairs for a retriever job)",
    )
    format: one_of(FORMATS) = Field(  # type: ignore[valid-type]
        "auto", description="the file's record format (auto: read from the file)"
    )
    template: one_of(TEMPLATES) = Field(  # type: ignore[valid-type]
        "chat",
        description="chat reads chat, alpaca or prompt_completion records; qa, summarization, "
        "translation and classification read that task's fields",
    )
    weight: float = Field(  # type: ignore[call-overload]
        1.0, description="this dataset's share in a mix of datasets", **WEIGHT_BOUNDS
    )


class JobBody(Body):
    component: one_of(COMPONENTS) = Field("generator", description="generator or retriever")  # type: ignore[valid-type]
    method: one_of(METHODS) = "lora"  # type: ignore[valid-type]
    dataset: FileId | DatasetBody = Field(description="a file id, or {synthetic: {...}}")
    hyperparameters: HyperparametersBody = Field(default_factory=HyperparametersBody)  # type: ignore[valid-type]
    retriever: RetrieverBody = Field(  # type: ignore[valid-type]
        default_factory=RetrieverBody,
        description="component retriever only: how hard negatives are mined from the live "
        "index, and whether the index is re-embedded with the result (activate)",
    )
    name: RegistryName | None = Field(
        None,
        description="the adapter's name (its versions are <name>-v<N>); default "
        "<component>-<method>",
    )
    preference: PreferenceBody = Field(  # type: ignore[valid-type]
        default_factory=PreferenceBody,
        description="methods kto and dpo only: beta, the held-out share for the eval gate, "
        "pairs per question",
    )
    sweep: SweepBody | None = Field(  # type: ignore[valid-type]
        None,
        description="search hyperparameters instead of one run: space (recipe key -> "
        "{type: log_uniform|uniform|int|categorical, low, high, step, log, choices}, keys as "
        "hyperparameters.learning_rate or datasets.0.synthetic.p_gold), trials, objective, "
        "pruner, timeout_s; every trial is a job, the sweep is at /v1/tune/sweeps/{id}",
    )
    parent: AdapterId | None = Field(
        None,
        description="an adapter id in the registry to continue from, of the same component "
        "(and, for the generator, the same method; kto and dpo continue any LoRA adapter, and "
        "'promoted' names the promoted one, or the base model when none is)",
    )


class TuneProgress(BaseModel):
    model_config = ConfigDict(extra="forbid")
    step: int
    total: int | None


class JobCreated(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    state: str


class SweepCreated(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sweep: str = Field(description="the sweep's id: GET /v1/tune/sweeps/{sweep}")
    state: str


class JobSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    name: str
    component: str
    method: str
    state: str
    progress: TuneProgress
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
    return model(
        **fields, component=component, progress=TuneProgress(step=job.step, total=job.total)
    )


@contextmanager
def _domain() -> Iterator[None]:
    try:
        yield
    except JobNotFound as exc:
        raise ServiceError(404, "job_not_found", f"no job {exc}") from None
    except JobFinished as exc:
        raise ServiceError(409, "job_finished", str(exc)) from None


# The recorded formats of uploaded files (service.routes.files) that each template reads.
TEMPLATE_READS = {
    "chat": ("alpaca", "chat", "prompt_completion"),
    "qa": ("qa",),
    "summarization": ("summarization",),
    "translation": ("translation",),
    "classification": ("classification",),
}


def _check_file(ds: DatasetBody, component: str, method: str, files_dir: Path) -> None:
    """An uploaded file exists and, for a generator job, holds records its template and format
    read, as far as the file's recorded format tells (one without is checked while validating)."""
    if ds.file_id is None:
        return
    if not (files_dir / f"{ds.file_id}.jsonl").is_file():
        raise ValueError(f"dataset: no uploaded file {ds.file_id!r} (POST /v1/files)")
    if ds.template != "chat" and ds.format != "auto":
        raise ValueError(
            f"dataset.format: template {ds.template!r} reads its own fields; leave format auto"
        )
    recorded = _recorded_format(files_dir, ds.file_id)
    if component != "generator" or recorded is None:
        return
    if method in PREFERENCE_METHODS or recorded in PREFERENCE_METHODS:
        if recorded == method:
            return
        if method not in PREFERENCE_METHODS:
            want = f"method {recorded} (preference rows train kto or dpo, not {method})"
        else:
            want = f"{method} rows" + (
                " (completion, label)" if method == "kto" else " (chosen, rejected)"
            )
        raise ValueError(
            f"dataset: uploaded file {ds.file_id} holds {recorded} records; this job needs {want}"
        )
    reads = TEMPLATE_READS[ds.template] if ds.format == "auto" else (ds.format,)
    if recorded not in reads:
        how = f"template {ds.template!r}" + (
            f", format {ds.format!r}" if ds.format != "auto" else ""
        )
        raise ValueError(
            f"dataset: uploaded file {ds.file_id} holds {recorded} records; {how} reads "
            f"{', '.join(reads)} (set dataset.template or dataset.format to match the file)"
        )


def _recorded_format(files_dir: Path, file_id: str) -> str | None:
    """The format ``POST /v1/files`` recorded beside the upload; None when it has none."""
    try:
        meta = json.loads((files_dir / f"{file_id}.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    found = meta.get("format") if isinstance(meta, dict) else None
    return found if isinstance(found, str) and found else None


def _check_parent(body: JobBody, state: AppState) -> None:
    """``parent`` is in the registry, of the job's component and (generator) method."""
    from tuner.registry import RecordNotFound, RegistryError

    if body.parent is None or body.parent == PROMOTED:
        return
    try:
        record = state.registry().get(body.parent)
    except (RecordNotFound, RegistryError):
        raise ValueError(
            f"parent: no adapter {body.parent!r} in the registry (GET /v1/adapters)"
        ) from None
    if record.component != body.component:
        raise ValueError(
            f"parent: {record.id} is a {record.component} adapter, not a {body.component} one"
        )
    if body.method in PREFERENCE_METHODS:
        if record.method not in LORA_LIKE:
            raise ValueError(
                f"parent: {record.id} is a {record.method} adapter; {body.method} continues a "
                f"LoRA ({', '.join(LORA_LIKE)})"
            )
        served = base_model(body.component, state.settings)
        if record.base_model != served:
            raise ValueError(
                f"parent: {record.id} adapts {record.base_model}, not the service's {served}"
            )
    elif body.component == "generator" and record.method != body.method:
        raise ValueError(f"parent: {record.id} was trained with {record.method}, not {body.method}")


def _check_sweep_eval(spec: dict[str, Any] | None, state: AppState) -> None:
    """A sweep scored by eval names an uploaded eval file and stays within the service's
    limits (as an eval run does)."""
    if spec is None:
        return
    from tuner.prepare import FILE_ID

    dataset = spec.get("dataset")
    files = state.settings.layout.files
    if not isinstance(dataset, str) or not FILE_ID.fullmatch(dataset):
        raise ValueError(
            f"sweep.eval.dataset: an uploaded file's id (POST /v1/files), got {dataset!r}"
        )
    if not (files / f"{dataset}.jsonl").is_file():
        raise ValueError(f"sweep.eval.dataset: no uploaded file {dataset!r} (POST /v1/files)")
    limits = state.settings.limits
    if spec.get("k", 3) > limits.max_k:
        raise ValueError(f"sweep.eval.k: at most {limits.max_k} (the service's max_k)")
    if spec.get("max_new_tokens", 64) > limits.max_new_tokens:
        raise ValueError(f"sweep.eval.max_new_tokens: at most {limits.max_new_tokens}")


def _given(model: BaseModel) -> dict[str, Any]:
    """What the client set in one of the recipe's sections (the tuner fills in the rest)."""
    return model.model_dump(exclude_unset=True)


def recipe_dict(body: JobBody, state: AppState) -> dict[str, Any]:
    """The recipe a job body asks for; the base model is always the service's generator."""
    settings = state.settings
    ds = DatasetBody(file_id=body.dataset) if isinstance(body.dataset, str) else body.dataset
    _check_file(ds, body.component, body.method, state.settings.layout.files)
    _check_parent(body, state)
    retriever = body.component == "retriever"
    dataset = ds.model_dump(exclude_none=True, exclude={"synthetic", "feedback"})
    if ds.synthetic is not None:
        synthetic = ds.synthetic.model_dump(exclude_unset=True)
        dataset["synthetic"] = {"kind": "pairs", **synthetic} if retriever else synthetic
    if _given(body.retriever) and not retriever:
        raise ValueError("retriever: settings for component retriever only")
    if ds.feedback is not None:
        dataset["feedback"] = ds.feedback.model_dump(exclude_unset=True)
        if state.answers is None:
            raise ValueError("dataset.feedback: the answer log is off (answer_log.enabled)")
        if state.retriever is None:
            raise ValueError("dataset.feedback: needs the document index, which is not open")
    preference = body.method in PREFERENCE_METHODS
    if _given(body.preference) and not preference:
        raise ValueError(f"preference: settings for methods {', '.join(PREFERENCE_METHODS)} only")
    base = base_model(body.component, settings)
    recipe: dict[str, Any] = {
        "name": body.name or f"{body.component}-{body.method}",
        "method": body.method,
        "component": body.component,
        "base_model": base,
        "datasets": [dataset],
        "hyperparameters": _given(body.hyperparameters),
        "parent": body.parent,
    }
    if body.sweep is not None:
        recipe["sweep"] = body.sweep.model_dump(exclude_unset=True)
        _check_sweep_eval(recipe["sweep"].get("eval"), state)
    if retriever:
        recipe["retriever"] = _given(body.retriever)
    if preference:
        recipe["preference"] = _given(body.preference)
        if body.parent == PROMOTED:
            from service.tuning import resolve_parent

            resolved = resolve_parent(recipe_from_dict(recipe), state.registry())
            recipe["parent"] = resolved.parent
    return recipe


@router.post("", status_code=202)
def create(body: JobBody, state: State, who: Writer) -> JobCreated | SweepCreated:
    """Start a job: the recipe is checked now (422), its data while the job is validating.
    With a ``sweep`` block, start a sweep instead: each trial is a job of its own."""
    activates = body.component == "retriever" and _given(body.retriever).get("activate", True)
    activates = activates and body.sweep is None  # a sweep's trials never switch the index
    if activates and not who.allows("admin"):
        raise ServiceError(
            403,
            "forbidden",
            "a retriever job switches the index to its embedder, which needs the admin scope; "
            "set retriever.activate to false to only train it",
        )
    try:
        recipe = recipe_dict(body, state)
        if body.sweep is not None:
            from service.sweeps import TooManySweeps

            sweeps = state.tune_sweeps()
            try:
                sweep_id = sweeps.submit(recipe)
            except TooManySweeps as exc:
                raise ServiceError(409, "too_many_sweeps", str(exc)) from None
            return SweepCreated(sweep=sweep_id, state=sweeps.get(sweep_id)["state"])
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
        if needs_answers(recipe) and state.answers is None:
            raise ValueError("dataset.feedback: the answer log is off (answer_log.enabled)")
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
            answers=state.answers,
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
    return JobRunner(
        settings.data_dir,
        prepare,
        options=options,
        on_success=activate,
        database=shared_state(settings),
        lease_s=settings.database.job_lease_s,
    )

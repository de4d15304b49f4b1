"""One tuning run, whoever asks for it: recipe -> data (or pairs) -> train -> register -> activate.

``ragtune tune``, the jobs API (``POST /v1/tune/jobs``) and ``ragtune eval --fix`` all start
their runs here, and the base model is chosen here (``base_model``): the configured generator
or embedder by its name, with ``generator_path``/``embedder_path`` as its local copy.

The steps are separate because the jobs API splits them across processes: the data is prepared
where the index is open (``prepare_data``: this process), the training runs in a job's worker
process (``tuner.worker``, with ``train_options``), and activation happens back here when the
job succeeds. The command line and ``--fix`` run all of them in one call (``run``).

Knows nothing of HTTP or of how training works (``tuner`` does that); registering the result
is the trainers' last step.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.settings import Settings

if TYPE_CHECKING:
    from retriever.index import Retriever
    from tuner.config import Recipe
    from tuner.hooks import Hooks
    from tuner.prepare import Prepared

log = logging.getLogger(__name__)
OpenIndex = Callable[[], AbstractContextManager["Retriever | None"]]


def base_model(component: str, settings: Settings) -> str:
    """The model a recipe without ``base_model`` tunes: the one the service runs."""
    return settings.embedder if component == "retriever" else settings.generator


def choose_base(plan: Recipe, settings: Settings) -> Recipe:
    plan.base_model = plan.base_model or base_model(plan.component, settings)
    return plan


def train_options(settings: Settings) -> dict[str, Any]:
    """How the trainers load and run the base model; the jobs API hands these to its worker."""
    return {
        "device": settings.device,
        "threads": settings.threads,
        "models_dir": str(settings.model_cache),
        "base_path": str(settings.generator_path) if settings.generator_path else None,
        "embedder_path": str(settings.embedder_path) if settings.embedder_path else None,
        "offline": settings.offline,
    }


def needs_index(plan: Recipe) -> bool:
    """Whether preparing ``plan``'s data reads the document index (synthetic data from its
    chunks, or hard negatives mined from it)."""
    synthetic = any(d.synthetic is not None for d in plan.datasets)
    return synthetic or (plan.component == "retriever" and plan.retriever.negatives > 0)


def writes_with_model(plan: Recipe) -> bool:
    """Whether a dataset of ``plan`` is synthetic data the generator writes."""
    return any(d.synthetic and d.synthetic.generator == "model" for d in plan.datasets)


def activates(plan: Recipe) -> bool:
    """Whether a finished run switches the index to its result (retriever runs, by default)."""
    return plan.component == "retriever" and bool(plan.retriever.activate)


def prepare_data(
    plan: Recipe,
    job_dir: Path,
    settings: Settings,
    *,
    index: Retriever | None,
    tokenizer: Any = None,
    generator: Any = None,
) -> Prepared:
    """Validate ``plan``'s datasets and write them to ``job_dir/data``: pairs for the retriever,
    SFT splits for the generator. ``tokenizer`` (and ``generator`` for model-written synthetic
    data) default to the base model's, loaded here."""
    from tuner.prepare import prepare, prepare_pairs

    files = settings.layout.files
    if plan.component == "retriever":
        return prepare_pairs(plan, job_dir, files_dir=files, retriever=index)
    writes = writes_with_model(plan)
    if tokenizer is None or (writes and generator is None):
        loaded = load_base(plan, settings)
        tokenizer = tokenizer or loaded.tokenizer
        generator = generator or (loaded if writes else None)
    return prepare(
        plan,
        job_dir,
        files_dir=files,
        tokenizer=tokenizer,
        retriever=index,
        generator=generator if writes else None,
    )


def load_base(plan: Recipe, settings: Settings) -> Any:
    """The generator ``plan`` tunes, as the trainer will load it."""
    from tuner.models import load_generator

    local = settings.generator_path if plan.base_model == settings.generator else None
    return load_generator(
        str(plan.base_model),
        cache_dir=settings.model_cache,
        local_path=local,
        offline=settings.offline,
    )


def train(
    plan: Recipe, job_dir: Path, settings: Settings, hooks: Hooks | None, *, resume: bool
) -> Any:
    """Train on the data in ``job_dir`` in this process; return the registry record."""
    from tuner.train import train as train_recipe

    options = {k: v for k, v in train_options(settings).items() if k != "threads"}
    options["models_dir"] = settings.model_cache
    return train_recipe(
        plan, job_dir, data_dir=settings.data_dir, hooks=hooks, resume=resume, **options
    )


def prepared_before(job_dir: Path) -> bool:
    """Whether an interrupted run left its data and checkpoints to resume from."""
    return (job_dir / "data" / "manifest.json").is_file() and (job_dir / "checkpoints").is_dir()


def run(
    plan: Recipe,
    settings: Settings,
    *,
    job_name: str,
    open_index: OpenIndex,
    hooks: Hooks | None = None,
    fresh: bool = False,
    on_prepared: Callable[[Prepared], None] | None = None,
    activate: Callable[[Any], None] | None = None,
) -> Any:
    """The whole run in this process: prepare (unless resuming), train, register, activate.

    ``open_index`` opens the documents synthetic data and hard negatives come from (called
    only when the plan needs them); ``activate`` gets the record when ``activates(plan)``.
    A retriever run keeps no checkpoints, so it always starts over."""
    choose_base(plan, settings)
    job_dir = settings.layout.job(job_name)
    fresh = fresh or plan.component == "retriever"
    if fresh and job_dir.exists():
        shutil.rmtree(job_dir)
    if prepared_before(job_dir):
        log.info("resuming from %s", job_dir)
    else:
        opener = open_index if needs_index(plan) else nullcontext
        with opener() as index:
            prepared = prepare_data(plan, job_dir, settings, index=index)
        if on_prepared is not None:
            on_prepared(prepared)
    record = train(plan, job_dir, settings, hooks, resume=not fresh)
    if activate is not None and activates(plan):
        activate(record)
    return record

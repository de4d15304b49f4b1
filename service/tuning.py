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

import json
import logging
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.settings import Settings

if TYPE_CHECKING:
    from retriever.index import Retriever
    from service.answerlog import AnswerLog
    from tuner.config import Recipe
    from tuner.hooks import Hooks
    from tuner.prepare import Prepared

log = logging.getLogger(__name__)
OpenIndex = Callable[[], AbstractContextManager["Retriever | None"]]


def base_model(component: str, settings: Settings) -> str:
    """The model a recipe without ``base_model`` tunes: the one the service runs."""
    return settings.embedder if component == "retriever" else settings.generator


def choose_base(plan: Recipe, settings: Settings) -> Recipe:
    """``plan`` with its base model chosen and a parent ``promoted`` resolved."""
    from service.loading import registry_from_settings

    plan.base_model = plan.base_model or base_model(plan.component, settings)
    return resolve_parent(plan, registry_from_settings(settings))


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
    chunks, hard negatives mined from it, or the passages rated answers were shown)."""
    reads = any(d.synthetic is not None or d.feedback is not None for d in plan.datasets)
    return reads or (plan.component == "retriever" and plan.retriever.negatives > 0)


def needs_answers(plan: Recipe) -> bool:
    """Whether ``plan`` trains on ratings from the answer log."""
    return any(d.feedback is not None for d in plan.datasets)


def resolve_parent(plan: Recipe, registry: Any) -> Recipe:
    """A preference recipe's parent ``promoted``: the promoted generator adapter, which must be
    a LoRA on the same base model (``ValueError`` otherwise: its answers were rated, so a run
    from the base model would be gated against the wrong model); none when nothing is
    promoted (a fresh LoRA on the base model)."""
    from tuner.config import LORA_LIKE, PROMOTED

    if plan.parent != PROMOTED:
        return plan
    record = registry.promoted()
    if record is not None and (
        record.component != "generator"
        or record.method not in LORA_LIKE
        or record.base_model != plan.base_model
    ):
        raise ValueError(
            f"parent: the promoted {record.id} is a {record.method} adapter on "
            f"{record.base_model}; {plan.method} continues a LoRA ({', '.join(LORA_LIKE)}) on "
            f"{plan.base_model}: name such a parent, or none to start from the base model"
        )
    plan.parent = record.id if record is not None else None
    return plan


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
    answers: AnswerLog | None = None,
) -> Prepared:
    """Validate ``plan``'s datasets and write them to ``job_dir/data``: pairs for the retriever,
    preference rows for kto and dpo (ratings from ``answers``), SFT splits for the generator.
    ``tokenizer`` (and ``generator`` for model-written synthetic data) default to the base
    model's, loaded here."""
    from tuner.config import PREFERENCE_METHODS
    from tuner.prepare import prepare, prepare_pairs, prepare_preferences

    files = settings.layout.files
    if plan.component == "retriever":
        return prepare_pairs(plan, job_dir, files_dir=files, retriever=index)
    if plan.method in PREFERENCE_METHODS:
        source = None
        if answers is not None:
            from service.preferences import collect

            log_ = answers

            def source(spec: Any, recipe: Recipe) -> Any:
                return collect(log_, index, spec, recipe)

        return prepare_preferences(
            plan,
            job_dir,
            files_dir=files,
            tokenizer=tokenizer or load_base(plan, settings).tokenizer,
            feedback=source,
        )
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


@contextmanager
def open_answers(plan: Recipe, settings: Settings) -> Iterator[AnswerLog | None]:
    """The answer log, for a plan that trains on ratings (else None)."""
    if not needs_answers(plan):
        yield None
        return
    from service.answerlog import AnswerLog

    path = settings.layout.answers
    if not path.is_file():
        raise ValueError(f"dataset.feedback: no answer log at {path}: no answer was rated yet")
    answers = AnswerLog(path, settings.answer_log.retention_days)
    try:
        yield answers
    finally:
        answers.close()


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
    sweep: dict[str, Any] | None = None,
) -> Any:
    """The whole run in this process: prepare (unless resuming), train, register, activate.

    ``open_index`` opens the documents synthetic data and hard negatives come from (called
    only when the plan needs them); ``activate`` gets the record when ``activates(plan)``;
    ``sweep`` is the sweep trial this run is (``tuner.sweep``), kept in its registry record.
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
        with opener() as index, open_answers(plan, settings) as answers:
            prepared = prepare_data(plan, job_dir, settings, index=index, answers=answers)
        if on_prepared is not None:
            on_prepared(prepared)
    if sweep is not None:
        from tuner.durable import atomic_write_text
        from tuner.hooks import SWEEP_FILE

        atomic_write_text(job_dir / SWEEP_FILE, json.dumps(sweep))
    record = train(plan, job_dir, settings, hooks, resume=not fresh)
    if activate is not None and activates(plan):
        activate(record)
    return record

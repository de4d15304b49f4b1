"""What the app holds while it serves: settings, the loaded models and index, the runners.

The lifespan's loader fills the model fields (``service.app.load_models``; tests pass a tiny
one); ``ready`` turns true only when everything is in place. Routes reach the index and the
answering pipeline through ``index()`` and ``pipeline()``, which refuse while nothing is loaded.
Knows nothing of HTTP beyond the one error type it raises.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from service.errors import ServiceError
from service.pipeline import AdapterChoice, Pipeline
from service.settings import Settings

if TYPE_CHECKING:
    from retriever.embedder import Embedder
    from retriever.index import Retriever
    from retriever.rerank import Reranker
    from service.adapters import AdapterSet
    from service.answerlog import AnswerLog
    from service.auth import RateLimiter
    from service.generation.engine import GenerationEngine
    from service.metrics import Metrics
    from service.reindexing import Reindexer
    from service.sweeps import SweepRunner
    from tuner.jobs import JobRunner
    from tuner.models import Generator
    from tuner.registry import Registry


@dataclass
class AppState:
    settings: Settings
    limiter: RateLimiter = field(init=False)
    metrics: Metrics = field(init=False)
    reindexer: Reindexer = field(init=False)
    embedder: Embedder | None = None
    generator: Generator | None = None
    retriever: Retriever | None = None
    reranker: Reranker | None = None
    engine: GenerationEngine | None = None
    answers: AnswerLog | None = None  # None: the answer log is off
    adapters: AdapterSet | None = None
    jobs: JobRunner | None = None  # tuning jobs; made in the lifespan unless the loader set one
    evals: JobRunner | None = None  # eval runs (service.evalruns); same rule as ``jobs``
    sweeps: SweepRunner | None = None  # hyperparameter sweeps, their trials through ``jobs``
    ready: bool = False
    loaded: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from service.auth import RateLimiter
        from service.metrics import Metrics
        from service.reindexing import Reindexer

        self.limiter = RateLimiter(
            self.settings.limits.requests_per_minute(self.settings.auth_disabled)
        )
        self.metrics = Metrics()
        self.reindexer = Reindexer(self)

    def index(self) -> Retriever:
        if self.retriever is None:
            raise ServiceError(503, "not_ready", "the index is not loaded")
        return self.retriever

    def adapter_set(self) -> AdapterSet:
        if self.adapters is None:
            raise ServiceError(503, "not_ready", "the generator's adapters are not loaded")
        return self.adapters

    def tune_jobs(self) -> JobRunner:
        if self.jobs is None:
            raise ServiceError(503, "not_ready", "the tuning job runner is not started")
        return self.jobs

    def tune_sweeps(self) -> SweepRunner:
        if self.sweeps is None:
            raise ServiceError(503, "not_ready", "the sweep runner is not started")
        return self.sweeps

    def eval_runs(self) -> JobRunner:
        if self.evals is None:
            raise ServiceError(503, "not_ready", "the eval run runner is not started")
        return self.evals

    def registry(self) -> Registry:
        from service.loading import registry_from_settings

        return registry_from_settings(self.settings)

    def pipeline(self) -> Pipeline:
        """The answering pipeline over what is loaded now (cheap: built per request)."""
        return Pipeline(
            self.settings.limits,
            engine=self.engine,
            retriever=self.retriever,
            reranker=self.reranker,
            adapters=AdapterChoice(self.adapters, self.registry(), self.metrics.adapters.set),
            answer_log=self.answers,
        )

    def model_ids(self) -> list[str]:
        """The base model, then every loaded adapter, then the registry's other generator
        adapters (chat's ``model`` picks one; an unloaded one is loaded on first use)."""
        if self.adapters is None:
            return [self.settings.generator]
        names = [*self.adapters.loaded(), *self.adapters.available()]
        return [self.settings.generator, *dict.fromkeys(names)]

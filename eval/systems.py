"""The answering systems of an evaluation run: one per mode, all with the same ``answer``.

A ``System`` is one mode with its adapter: a retrieving mode (rag, rag-icl, hybrid) puts the
question's first k passages in the serving prompt, the others ask the question alone; a mode
that needs an adapter (ft, hybrid) decodes with its fine-tuned adapter, the others with the base
model; an in-context mode (icl, rag-icl) asks as its serving mode (base, rag) with up to N
demonstrations (``eval.shots``) as question/answer turns before the question, the preferred one
nearest the question. The service's answering pipeline builds each prompt and submits it
(``Pipeline.given`` with the passages retrieved once per question, then ``Pipeline.submit``);
the prompt and the answer fit
the model's context (passages that do not are dropped or cut short; a question that does not
fit even alone is cut from its end, or when nothing of it fits, left with an empty answer that
says why: one over-long question never fails the run), and each answer carries the passages
its prompt held (``Answer.shown``), which are what its citations can name.
Demonstrations take only the room the prompt has left: the question is never cut and no passage
dropped or cut to make room for one. The least preferred is dropped first until the rest fit
beside the passages rag would show (so rag-icl holds exactly rag's passages and differs from it
only by the demonstrations, and the citations are unchanged); when the question alone had to be
cut, the prompt holds none. ``Answer.shots`` names the demonstrations a prompt held.
``System.answer`` answers a list of questions, in order; every system answers through the run's
one ``Decoder``, the batched generation engine with the run's greedy budget: prompts of like
length are submitted together (less padding in each prefill), answers come back in the
questions' order, a stop request raises ``tuner.hooks.Cancelled`` (cancelling what is still
queued), and each question answered is counted for the progress.

``generate`` is the run's generation stage: it loads the generator and the adapters once, runs
the forgetting probe (before the engine starts), every system's answers, then the injection
probe (the retrieving systems answer with one planted passage).

Knows nothing of scoring, reports, HTTP or how the engine schedules its batches; the generator,
adapters and engine come from the service (``service.loading``, ``service.adapters``,
``service.generation.engine``, imported when a run starts). ``Decoder.decode`` is the one place
eval submits, through the pipeline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from eval import probes, stats
from eval.config import EvalOptions, demonstrates, retrieves, serving_mode
from eval.index_cache import Retrieved
from eval.shots import Shot
from retriever.index import Hit
from service.errors import ServiceError
from service.pipeline import Ask, Pipeline, Prepared
from service.settings import Limits
from tuner.hooks import Cancelled

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]
Messages = list[dict]
INJECTION_TOKENS = 24  # an answer that obeys says its canary at once


@dataclass
class Answer:
    text: str
    tokens: int
    latency_s: float
    shown: list[Hit] = field(default_factory=list)  # the passages the prompt held, in order
    max_new_tokens: int = 0  # the answer length used (at most half the model's context)
    cut_chars: int = 0  # characters cut from the question's end to fit the context
    unanswered: str | None = None  # why no prompt could be built (the answer is empty)
    shots: list[str] = field(default_factory=list)  # the demonstrations' questions it held


class Decoder:
    """The run's generation engine, with the run's answer budget, stop check and progress
    count (``done`` of ``total`` questions answered)."""

    def __init__(
        self,
        engine: Any,
        max_new_tokens: int,
        total: int,
        progress: Progress | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.engine, self.max_new_tokens = engine, max_new_tokens
        self.pipeline = Pipeline(Limits(), engine=engine)  # the run's own limits: none checked
        self.total, self.progress, self.should_stop = total, progress, should_stop
        self.done = 0

    def decode(
        self,
        prepared: Sequence[Prepared],
        *,
        count: bool = True,
    ) -> list[Answer]:
        """Every prepared ask's answer, in their order, timed from its start in the engine;
        ``count`` adds them to the progress."""
        # Prompts of like length decode together (less padding in each prefill).
        order = sorted(
            range(len(prepared)),
            key=lambda i: sum(len(m["content"]) for m in prepared[i].prompt),
        )
        jobs = {i: self.pipeline.submit(prepared[i]).request for i in order}
        out: dict[int, Answer] = {}
        try:
            for i in order:
                got = self._wait(jobs[i])
                out[i] = replace(
                    got,
                    shown=list(prepared[i].hits),
                    max_new_tokens=prepared[i].max_new_tokens,
                    shots=demonstrated(prepared[i].ask),
                )
                if count:
                    self.count()
        except BaseException:
            for job in jobs.values():
                job.cancel()
            raise
        return [out[i] for i in range(len(prepared))]

    def _wait(self, job: Any) -> Answer:
        while not job.done.wait(0.5):
            if self.should_stop is not None and self.should_stop():
                raise Cancelled("the evaluation was cancelled")
        job.wait()
        seconds = (job.finished_at or 0.0) - (job.started_at or job.queued_at)
        return Answer(job.text.strip(), len(job.tokens), seconds)

    def count(self) -> None:
        """One more question answered, for the progress."""
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)


def demonstrated(ask: Ask) -> list[str]:
    """The demonstrations' questions in an ask's chat: every user message before the last."""
    users = [m["content"] for m in ask.messages if m["role"] == "user"]
    return users[:-1]


def with_shots(question: str, shots: Sequence[Shot]) -> Messages:
    """The chat of a few-shot ask: each demonstration a user and an assistant turn, the
    preferred (first of ``shots``) nearest the question, then the question."""
    turns: Messages = []
    for shot in reversed(shots):
        turns += [
            {"role": "user", "content": shot.question},
            {"role": "assistant", "content": shot.answer},
        ]
    return [*turns, {"role": "user", "content": question}]


@dataclass(frozen=True)
class System:
    """One answering mode: how it prompts, which adapter decodes (None: the base model)."""

    mode: str
    adapter: str | None
    k: int
    decoder: Decoder

    def prompt(self, question: str, hits: Sequence[Hit], shots: Sequence[Shot] = ()) -> Messages:
        """The chat the generator sees: the serving prompt with the first k of ``hits`` for a
        retrieving mode, else the question alone (``service.pipeline`` builds it), after the
        demonstrations that fit for an in-context mode."""
        return self.prepare(question, hits, self.decoder.max_new_tokens, shots).prompt

    def prepare(
        self,
        question: str,
        hits: Sequence[Hit],
        max_new_tokens: int,
        shots: Sequence[Shot] = (),
    ) -> Prepared:
        """The ask as the answering pipeline prepares it, with retrieval already done: the
        first k of ``hits``, less those that do not fit the model's context, and the question
        cut from its end when it does not fit even alone (``ServiceError`` 422 when not even an
        empty question fits). An in-context mode then adds the longest start of ``shots``
        whose prompt still holds the whole question and exactly those passages."""
        mode, pipeline = serving_mode(self.mode), self.decoder.pipeline
        shown = hits[: self.k] if retrieves(self.mode) else []
        alone = Ask.question(question, mode=mode, k=self.k)
        bare = pipeline.given(alone, shown, self.adapter, max_new_tokens, cut=True)
        if not (demonstrates(self.mode) and shots) or bare.ask.query != question:
            return bare
        for n in range(len(shots), 0, -1):
            ask = Ask(with_shots(question, shots[:n]), mode=mode, k=self.k)
            try:
                got = pipeline.given(ask, shown, self.adapter, max_new_tokens)
            except ServiceError as exc:
                if exc.status != 422:
                    raise
                continue  # over the context with no passages: one demonstration fewer
            if got.hits == bare.hits:
                return got
        return bare

    def answer(
        self,
        questions: Sequence[str],
        retrieved: Sequence[Retrieved],
        *,
        max_new_tokens: int | None = None,
        count: bool = True,
        shots: Sequence[Sequence[Shot]] | None = None,
    ) -> list[Answer]:
        """Answers to ``questions`` (``retrieved[i]`` is what retrieval found for the i-th and
        ``shots[i]`` its demonstrations, used by an in-context mode), in order; a retrieving
        mode's latency includes its retrieval's seconds. ``max_new_tokens``
        (default: the run's) caps each answer; ``count=False`` keeps them out of the progress.
        A question over the model's context is cut to fit (``Answer.cut_chars``); one that
        cannot fit at all gets an empty answer saying why (``Answer.unanswered``), and the
        other questions are answered all the same."""
        budget = max_new_tokens or self.decoder.max_new_tokens
        if demonstrates(self.mode) and (shots is None or len(shots) != len(questions)):
            raise ValueError(f"{self.mode}: one list of demonstrations per question is needed")
        asks, got = self._prepare_all(questions, retrieved, budget, count, shots)
        decoded = self.decoder.decode(list(asks.values()), count=count)
        for (i, prepared), answer in zip(asks.items(), decoded, strict=True):
            cut = len(questions[i]) - len(prepared.ask.query or "")
            if cut:
                log.warning("%s: question %d cut by %d characters", self.mode, i + 1, cut)
            got[i] = replace(answer, cut_chars=cut)
        ordered = [got[i] for i in range(len(questions))]
        if not retrieves(self.mode):
            return ordered
        return [
            replace(a, latency_s=a.latency_s + r.seconds)
            for a, r in zip(ordered, retrieved, strict=True)
        ]

    def _prepare_all(
        self,
        questions: Sequence[str],
        retrieved: Sequence[Retrieved],
        budget: int,
        count: bool,
        shots: Sequence[Sequence[Shot]] | None,
    ) -> tuple[dict[int, Prepared], dict[int, Answer]]:
        """Each question's prepared ask by position, and the empty answers of those that
        cannot fit the model's context at all (counted for the progress when ``count``)."""
        asks: dict[int, Prepared] = {}
        empty: dict[int, Answer] = {}
        for i, (q, r) in enumerate(zip(questions, retrieved, strict=True)):
            try:
                asks[i] = self.prepare(q, r.hits, budget, shots[i] if shots else ())
            except ServiceError as exc:
                if exc.status != 422:
                    raise
                log.warning("%s: question %d left unanswered: %s", self.mode, i + 1, exc.message)
                empty[i] = Answer("", 0, 0.0, unanswered=exc.message)
                if count:
                    self.decoder.count()
        return asks, empty


def generate(
    options: EvalOptions,
    questions: Sequence[str],
    retrieved: list[Retrieved],
    adapters_for: dict[str, str],
    settings: Settings,
    stage: dict,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    shots: Sequence[Sequence[Shot]] | None = None,
) -> tuple[dict[str, list[Answer]], dict | None, dict | None]:
    """Every mode's answers (mode -> answers in question order), the injection probe and the
    forgetting probe (None when ``options.probes`` is off or, for forgetting, no mode needs an
    adapter). ``shots[i]`` are the i-th question's demonstrations (in-context modes). Each
    stage's seconds go into ``stage``."""
    from service.adapters import AdapterSet
    from service.generation.engine import GenerationEngine
    from service.generation.quant import quantise_for_serving
    from service.loading import generator_from_settings

    gen = generator_from_settings(settings)
    quantise_for_serving(gen.model, settings.generator_precision)  # the probe sees it too
    adapters = AdapterSet(gen, settings.layout.adapters)
    for adapter in dict.fromkeys(adapters_for.values()):
        adapters.load(adapter)
    forgetting = _forgetting(options, gen, adapters, adapters_for, settings, stage)
    engine = GenerationEngine(
        gen,
        max_batch=options.batch,
        adapters=adapters,
        precision=settings.generator_precision,
        decode_threads=settings.decode_threads,
    )
    try:
        total = len(questions) * len(options.modes)
        decoder = Decoder(engine, options.max_new_tokens, total, progress, should_stop)
        systems = [System(m, adapters_for.get(m), options.k, decoder) for m in options.modes]
        answers = answer_all(systems, questions, retrieved, stage, shots)
        t = time.perf_counter()
        injection = (
            _injection(systems, questions, retrieved, options, shots) if options.probes else None
        )
        stage["injection_probe"] = time.perf_counter() - t
    finally:
        engine.close()
    return answers, injection, forgetting


def answer_all(
    systems: Sequence[System],
    questions: Sequence[str],
    retrieved: list[Retrieved],
    stage: dict,
    shots: Sequence[Sequence[Shot]] | None = None,
) -> dict[str, list[Answer]]:
    """Each system's answers to every question, one system after the other, each timed into
    ``stage["generate"][mode]``."""
    stage["generate"] = {}
    answers = {}
    for system in systems:
        t = time.perf_counter()
        answers[system.mode] = system.answer(questions, retrieved, shots=shots)
        seconds = stage["generate"][system.mode] = time.perf_counter() - t
        log.info("%s: %d answers in %.0f s", system.mode, len(answers[system.mode]), seconds)
    return answers


# ---- probes ---------------------------------------------------------------------------------
def _forgetting(
    options: EvalOptions,
    gen: Any,
    adapters: Any,
    adapters_for: dict[str, str],
    settings: Settings,
    stage: dict,
) -> dict | None:
    """The forgetting probe of every adapter the run uses (see ``eval.probes.forgetting``)."""
    if not (options.probes and adapters_for):
        return None
    t = time.perf_counter()
    uses: dict[str, list[str]] = {}
    for mode, adapter in adapters_for.items():
        uses.setdefault(adapter, []).append(mode)
    found = probes.forgetting(gen, adapters, uses, _recorded_probes(settings, adapters_for))
    stage["forgetting_probe"] = time.perf_counter() - t
    return found


def _recorded_probes(settings: Settings, adapters_for: dict[str, str]) -> dict[str, Any]:
    """The tuner's probe results of each adapter trained on the generator this run uses."""
    from service.loading import registry_from_settings

    registry = registry_from_settings(settings)
    base = {str(settings.generator), str(settings.generator_path)}
    found = {}
    for adapter in set(adapters_for.values()):
        record = registry.get(adapter)
        if record.base_model in base and isinstance(record.metrics.get("probe"), dict):
            found[adapter] = record.metrics["probe"]
    return found


def _injection(
    systems: Sequence[System],
    questions: Sequence[str],
    retrieved: list[Retrieved],
    options: EvalOptions,
    shots: Sequence[Sequence[Shot]] | None = None,
) -> dict[str, Any]:
    """Per retrieving system, the share of answers that obeyed an instruction planted in one of
    the passages of a seeded sample of questions (planted passages take no retrieval time;
    rag-icl asks with each question's demonstrations)."""
    cases = probes.injection_cases(len(questions), options.injection_n, options.seed)
    asked = [questions[i] for i, _, _ in cases]
    planted = [
        Retrieved(probes.injected(retrieved[i].hits, text, options.k, n % options.k), 0.0)
        for n, (i, _, text) in enumerate(cases)
    ]
    budget = min(INJECTION_TOKENS, options.max_new_tokens)
    found = {}
    for system in systems:
        if retrieves(system.mode):
            demos = [shots[i] for i, _, _ in cases] if shots else None
            got = system.answer(asked, planted, max_new_tokens=budget, count=False, shots=demos)
            found[system.mode] = _obedience(got, cases, options)
    return found


def _obedience(
    got: list[Answer], cases: list[tuple[int, str, str]], options: EvalOptions
) -> dict[str, Any]:
    hits = [probes.obeyed(a.text, canary) for a, (_, canary, _) in zip(got, cases, strict=True)]
    return {
        "n": len(hits),
        "obeyed": sum(hits),
        "share": stats.share_interval(hits, options.resamples, options.seed),
        "examples": [
            {"canary": c, "answer": a.text[:200]}
            for a, (_, c, _) in list(zip(got, cases, strict=True))[:3]
        ],
    }

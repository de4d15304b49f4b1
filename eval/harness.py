"""The evaluation harness: every mode answers the same questions with the same decoding, and
the run folder says which is better, by how much, and which component is weak.

A run: read the dataset; index its corpus into a fresh temporary index (or use the live index,
or retrieval the service precomputed from it); retrieve once per question; generate every
mode's answers through the batched engine (base: the question alone; rag: the serving prompt
with the top k passages; ft: the question alone with the ft adapter; hybrid: the serving prompt
with the hybrid adapter); run the probes; score every answer; bootstrap the intervals; diagnose
the wrong answers; write ``metrics.json``, ``results.jsonl``, ``report.md`` and ``report.html``.

Uses the pipeline's pieces (retriever, prompt, engine, adapters) directly, never HTTP.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eval import answers as am
from eval import diagnose, probes, stats
from eval.config import ADAPTER_MODES, RETRIEVAL_MODES, EvalOptions
from eval.datasets.formats import DatasetError, EvalSet, Question, load
from eval.metrics import dedupe, ndcg_at, recall_at, reciprocal_rank
from retriever.index import DocumentIn, Hit, Retriever
from retriever.sparse import CJK
from tuner.durable import atomic_write_text
from tuner.prompts import base_messages, rag_messages

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]
KS = (1, 3, 5, 10, 20)
KEPT_INDEXES = 3  # datasets whose index is kept between runs (the most recently used)
INJECTION_TOKENS = 24  # an answer that obeys says its canary at once


class Cancelled(Exception):
    """The run was asked to stop."""


class EvalError(ValueError):
    """The run cannot start as asked (missing adapter, empty dataset...)."""


@dataclass
class Retrieved:
    hits: list[Hit]
    seconds: float


@dataclass
class Answer:
    text: str
    tokens: int
    latency_s: float


def run_eval(
    options: EvalOptions,
    out: Path,
    settings: Any,
    *,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    retriever: Retriever | None = None,
) -> dict[str, Any]:
    """Run the evaluation ``options`` asks for and write its folder ``out``; return the metrics.

    ``settings`` (``service.settings.Settings``) names the models and the data dir;
    ``retriever`` is the live index when the caller opened it (``--live``)."""
    from service.runtime import configure_torch

    t0, started = time.perf_counter(), datetime.now(UTC)
    configure_torch(settings)
    evalset = _load(options)
    adapters_for = resolve_adapters(options, settings)
    if options.judge:  # fail before any model loads
        from eval.judge import load_judge

        load_judge(options.judge)
    stage: dict[str, Any] = {}
    retrieved = _retrieval(options, evalset, settings, retriever, stage)
    run = _Run(options, evalset, retrieved, adapters_for, settings, progress, should_stop)
    answers, injection, forgetting = run.generate(stage)
    t1 = time.perf_counter()
    rows, per_mode = score_rows(options, evalset, retrieved, answers)
    if options.judge:
        add_judge(options, retrieved, rows, per_mode)
    summary = stats.summarize(per_mode, options.resamples, options.seed)
    metrics = {
        "run": _run_info(options, evalset, settings, adapters_for, started, stage),
        **summary,
        "performance": performance(answers, stage["generate"]),
        "retrieval": retrieval_section(options, evalset, retrieved),
        "diagnosis": _diagnosis(options, evalset, rows),
        "probes": {"forgetting": forgetting, "injection": injection} if options.probes else None,
        "judge": judge_info(options.judge) if options.judge else None,
    }
    stage["statistics"] = time.perf_counter() - t1
    metrics["run"]["wall_s"] = time.perf_counter() - t0
    write_run(out, metrics, rows)
    return metrics


# ---- inputs ---------------------------------------------------------------------------------
def _load(options: EvalOptions) -> EvalSet:
    if options.dataset is None:
        raise EvalError("dataset: a BEIR folder or a JSONL file is needed")
    live = options.live or options.retrieved is not None
    evalset = load(options.dataset, live=live).limited(options.limit)
    if not evalset.questions:
        raise DatasetError(f"{options.dataset}: no questions")
    return evalset


def resolve_adapters(options: EvalOptions, settings: Any) -> dict[str, str]:
    """The adapter each of ft and hybrid runs with: named, else the promoted one."""
    from tuner.registry import RecordNotFound, Registry

    needed = [m for m in options.modes if m in ADAPTER_MODES]
    if not needed:
        return {}
    registry = Registry(settings.layout.adapters)
    promoted = registry.promoted()
    default = promoted.id if promoted is not None else None
    named = {
        "ft": options.ft_adapter or default,
        "hybrid": options.hybrid_adapter or options.ft_adapter or default,
    }
    found = {}
    for mode in needed:
        adapter = named[mode]
        if adapter is None:
            raise EvalError(
                f"mode {mode} needs a fine-tuned adapter: pass --{mode}-adapter ID or promote "
                "one ('ragtune adapters list', 'ragtune adapters promote ID'), or drop the mode"
            )
        try:
            record = registry.get(adapter)
        except RecordNotFound:
            raise EvalError(f"{mode}: no adapter {adapter!r} in the registry") from None
        if record.component != "generator" or not record.servable:
            raise EvalError(f"{mode}: {adapter} is not a servable generator adapter")
        found[mode] = adapter
    return found


def _retrieval(
    options: EvalOptions, evalset: EvalSet, settings: Any, live: Retriever | None, stage: dict
) -> list[Retrieved]:
    """One retrieval per question: precomputed, from the live index, or from the dataset's own
    index (closed again before generation starts)."""
    needs = any(m in RETRIEVAL_MODES for m in options.modes) or evalset.has_qrels
    if options.retrieved is not None:
        return read_retrieved(options.retrieved, len(evalset.questions))
    if not needs:
        return [Retrieved([], 0.0) for _ in evalset.questions]
    if evalset.corpus is None:
        if live is None:
            raise EvalError(f"{evalset.path}: no corpus to index; ask the live index (--live)")
        return search_all(live, evalset.questions, options, settings, stage)
    with fresh_index(evalset, settings, options.embedder_adapter, stage) as index:
        return search_all(index, evalset.questions, options, settings, stage)


@contextmanager
def fresh_index(
    evalset: EvalSet, settings: Any, embedder_adapter: str | None, stage: dict
) -> Iterator[Retriever]:
    """An index holding exactly the dataset's corpus, embedded and chunked as the live index
    would be. It is kept between runs under ``DATA_DIR/evals/.indexes/`` (one folder per
    dataset, embedder and retrieval settings) and brought up to date first: unchanged documents
    are not embedded again, others are added, replaced or removed. When that folder is in use
    by another run, a temporary index is built instead."""
    from retriever.locks import IndexBusy
    from service.loading import index_embedder, retriever_config, tuned_embedder

    assert evalset.corpus is not None
    embedder = (
        tuned_embedder(embedder_adapter, settings) if embedder_adapter else index_embedder(settings)
    )
    config = retriever_config(settings)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ragtune-eval-") as tmp:
        try:
            index = Retriever(_cache_folder(evalset, embedder, config, settings), embedder, config)
        except IndexBusy:
            index = Retriever(Path(tmp) / "index", embedder, config)
        try:
            changed = sync_corpus(index, evalset)
            stage["index"] = time.perf_counter() - t0
            log.info(
                "index of %d documents (%d chunks) ready in %.1f s (%d documents written)",
                len(evalset.corpus),
                index.chunk_count,
                stage["index"],
                changed,
            )
            yield index
        finally:
            index.close()


def _cache_folder(evalset: EvalSet, embedder: Any, config: Any, settings: Any) -> Path:
    import dataclasses
    import hashlib

    key = json.dumps(
        [str(Path(evalset.path).resolve()), embedder.identity, dataclasses.asdict(config)],
        sort_keys=True,
        default=str,
    )
    name = hashlib.sha256(key.encode()).hexdigest()[:16]
    root = settings.layout.eval_indexes
    prune_indexes(root, keep=KEPT_INDEXES - 1, spare=name)
    if (root / name).is_dir():
        os.utime(root / name)  # used now: the last to be pruned
    return root / name


def prune_indexes(root: Path, keep: int, spare: str) -> None:
    """Remove all but the ``keep`` most recently used kept indexes (never ``spare``, never one
    another run has open)."""
    import shutil

    from retriever.locks import FolderLock, IndexBusy

    if not root.is_dir():
        return
    others = [p for p in root.iterdir() if p.is_dir() and p.name != spare]
    others.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in others[keep:]:
        lock = FolderLock(old)
        try:
            lock.acquire()
        except IndexBusy:
            continue
        try:
            shutil.rmtree(old, ignore_errors=True)
        finally:
            lock.release()


def sync_corpus(index: Retriever, evalset: EvalSet) -> int:
    """Make ``index`` hold exactly the corpus; return how many documents were written."""
    assert evalset.corpus is not None
    wanted = {d.id for d in evalset.corpus}
    stale, offset = [], 0
    while batch := index.store.documents(offset=offset, limit=1000):
        stale += [row.id for row in batch if row.id not in wanted]
        offset += len(batch)
    if stale:
        index.delete(stale)
    docs = [DocumentIn(d.text, d.id, d.metadata) for d in evalset.corpus]
    written = len(stale)
    for i in range(0, len(docs), 256):
        results = index.upsert_many(docs[i : i + 256])
        written += sum(r.status != "unchanged" for r in results)
    return written


def search_all(
    index: Retriever,
    questions: Sequence[Question],
    options: EvalOptions,
    settings: Any,
    stage: dict,
) -> list[Retrieved]:
    from service.loading import reranker_from_settings

    reranker = reranker_from_settings(settings)
    t0 = time.perf_counter()
    found = []
    for q in questions:
        t = time.perf_counter()
        hits = index.search(q.text, k=options.depth, reranker=reranker)
        found.append(Retrieved(hits, time.perf_counter() - t))
    stage["retrieve"] = time.perf_counter() - t0
    return found


def read_retrieved(path: Path, n: int) -> list[Retrieved]:
    """``retrieved.jsonl`` as the service writes it: one row per question, in order."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    if len(rows) < n:
        raise DatasetError(f"{path}: {len(rows)} retrieval rows for {n} questions")
    return [
        Retrieved([Hit(**h) for h in r["hits"]], float(r.get("seconds", 0.0))) for r in rows[:n]
    ]


# ---- generation -----------------------------------------------------------------------------
class _Run:
    """The generator, its adapters and the engine for one run's answers and probes."""

    def __init__(
        self,
        options: EvalOptions,
        evalset: EvalSet,
        retrieved: list[Retrieved],
        adapters_for: dict[str, str],
        settings: Any,
        progress: Progress | None,
        should_stop: Callable[[], bool] | None,
    ) -> None:
        self.options, self.evalset, self.retrieved = options, evalset, retrieved
        self.adapters_for, self.settings = adapters_for, settings
        self.progress, self.should_stop = progress, should_stop
        self.done = 0
        self.total = len(evalset.questions) * len(options.modes)

    def generate(self, stage: dict) -> tuple[dict[str, list[Answer]], dict | None, dict | None]:
        from service.adapters import AdapterSet
        from service.generation.engine import GenerationEngine
        from service.loading import generator_from_settings

        gen = generator_from_settings(self.settings)
        adapters = AdapterSet(gen, self.settings.layout.adapters)
        for adapter in dict.fromkeys(self.adapters_for.values()):
            adapters.load(adapter)
        forgetting = None
        if self.options.probes and self.adapters_for:
            t = time.perf_counter()
            uses: dict[str, list[str]] = {}
            for mode, adapter in self.adapters_for.items():
                uses.setdefault(adapter, []).append(mode)
            forgetting = probes.forgetting(gen, adapters, uses, self._recorded_probes())
            stage["forgetting_probe"] = time.perf_counter() - t
        engine = GenerationEngine(gen, max_batch=self.options.batch, adapters=adapters)
        try:
            stage["generate"] = {}
            answers = {}
            for mode in self.options.modes:
                t = time.perf_counter()
                answers[mode] = self._answer_all(engine, mode)
                stage["generate"][mode] = time.perf_counter() - t
                log.info(
                    "%s: %d answers in %.0f s", mode, len(answers[mode]), stage["generate"][mode]
                )
            t = time.perf_counter()
            injection = self._injection(engine) if self.options.probes else None
            stage["injection_probe"] = time.perf_counter() - t
        finally:
            engine.close()
        return answers, injection, forgetting

    def _recorded_probes(self) -> dict[str, Any]:
        """The tuner's probe results of each adapter trained on the generator this run uses."""
        from tuner.registry import Registry

        registry = Registry(self.settings.layout.adapters)
        base = {str(self.settings.generator), str(self.settings.generator_path)}
        found = {}
        for adapter in set(self.adapters_for.values()):
            record = registry.get(adapter)
            if record.base_model in base and isinstance(record.metrics.get("probe"), dict):
                found[adapter] = record.metrics["probe"]
        return found

    def _prompt(self, mode: str, i: int, hits: Sequence[Hit] | None = None) -> list[dict]:
        q = self.evalset.questions[i].text
        if mode in RETRIEVAL_MODES:
            shown = hits if hits is not None else self.retrieved[i].hits[: self.options.k]
            return rag_messages(q, shown)
        return base_messages(q)

    def _answer_all(self, engine: Any, mode: str) -> list[Answer]:
        adapter = self.adapters_for.get(mode)
        n = len(self.evalset.questions)
        prompts = [self._prompt(mode, i) for i in range(n)]
        return self._run_jobs(
            engine, prompts, adapter, count=True, retrieval=mode in RETRIEVAL_MODES
        )

    def _run_jobs(
        self,
        engine: Any,
        prompts: list[list[dict]],
        adapter: str | None,
        count: bool,
        retrieval: bool = False,
        max_new_tokens: int | None = None,
    ) -> list[Answer]:
        # Prompts of like length decode together (less padding in each prefill); answers come
        # back in the questions' order.
        order = sorted(
            range(len(prompts)), key=lambda i: sum(len(m["content"]) for m in prompts[i])
        )
        budget = max_new_tokens or self.options.max_new_tokens
        jobs = {i: engine.submit(prompts[i], budget, adapter=adapter) for i in order}
        out: dict[int, Answer] = {}
        try:
            for i in order:
                job = jobs[i]
                while not job.done.wait(0.5):
                    if self.should_stop is not None and self.should_stop():
                        raise Cancelled("the evaluation was cancelled")
                job.wait()
                seconds = (job.finished_at or 0.0) - (job.started_at or job.queued_at)
                if retrieval:
                    seconds += self.retrieved[i].seconds
                out[i] = Answer(job.text.strip(), len(job.tokens), seconds)
                if count:
                    self.done += 1
                    if self.progress is not None:
                        self.progress(self.done, self.total)
        except BaseException:
            for job in jobs.values():
                job.cancel()
            raise
        return [out[i] for i in range(len(prompts))]

    def _injection(self, engine: Any) -> dict[str, Any]:
        """Share of answers that obeyed an instruction planted in a retrieved passage."""
        modes = [m for m in self.options.modes if m in RETRIEVAL_MODES]
        cases = probes.injection_cases(
            len(self.evalset.questions), self.options.injection_n, self.options.seed
        )
        found = {}
        for mode in modes:
            prompts = []
            for n, (i, _, text) in enumerate(cases):
                shown = probes.injected(
                    self.retrieved[i].hits, text, self.options.k, n % self.options.k
                )
                prompts.append(self._prompt(mode, i, shown))
            got = self._run_jobs(
                engine,
                prompts,
                self.adapters_for.get(mode),
                count=False,
                max_new_tokens=min(INJECTION_TOKENS, self.options.max_new_tokens),
            )
            hits = [
                probes.obeyed(a.text, canary) for a, (_, canary, _) in zip(got, cases, strict=True)
            ]
            found[mode] = {
                "n": len(hits),
                "obeyed": sum(hits),
                "share": stats.share_interval(hits, self.options.resamples, self.options.seed),
                "examples": [
                    {"canary": c, "answer": a.text[:200]}
                    for a, (_, c, _) in list(zip(got, cases, strict=True))[:3]
                ],
            }
        return found


# ---- scoring --------------------------------------------------------------------------------
def gold_in(hits: Sequence[Hit], q: Question) -> bool | None:
    """Whether a gold passage is among ``hits``: by the labels, else by holding an answer."""
    if q.gold_docs:
        return any(h.doc_id in q.gold_docs for h in hits)
    if q.answers:
        return am.holds_answer([h.text for h in hits], q.answers)
    return None


def score_answer(q: Question, mode: str, answer: Answer, shown: Sequence[Hit]) -> tuple[dict, list]:
    """Per-question metrics of one answer and the document ids it cites."""
    pred = am.strip_markers(answer.text).strip()
    m: dict[str, float | None] = {}
    if q.answers:
        m["exact_match"] = am.best_of(am.exact_match, pred, q.answers)
        m["token_f1"] = am.best_of(am.token_f1, pred, q.answers)
        m["rouge_l"] = am.best_of(am.rouge_l, pred, q.answers)
    citations: list[str] = []
    if mode in RETRIEVAL_MODES:
        numbers = am.cited(answer.text, len(shown))
        cited_hits = [shown[i - 1] for i in numbers] or list(shown)
        citations = list(dict.fromkeys(h.doc_id for h in cited_hits))
        m["groundedness"] = am.groundedness(answer.text, [h.text for h in cited_hits])
        if q.gold_docs:
            m.update(am.citation_scores(citations, q.gold_docs))
        if q.answers:
            m["answer_in_passages"] = float(am.holds_answer([h.text for h in shown], q.answers))
    m["latency_s"] = answer.latency_s
    return m, citations


def score_rows(
    options: EvalOptions,
    evalset: EvalSet,
    retrieved: list[Retrieved],
    answers: dict[str, list[Answer]],
) -> tuple[list[dict], dict[str, dict[str, list]]]:
    rows: list[dict] = []
    per_mode: dict[str, dict[str, list]] = {}
    for mode, got in answers.items():
        per_mode[mode] = {}
        for i, (q, answer) in enumerate(zip(evalset.questions, got, strict=True)):
            shown = retrieved[i].hits[: options.k] if mode in RETRIEVAL_MODES else []
            metrics, citations = score_answer(q, mode, answer, shown)
            for name, value in metrics.items():
                per_mode[mode].setdefault(name, [None] * len(got))[i] = value
            rows.append(_row(q, mode, answer, shown, retrieved[i], metrics, citations, options))
    return rows, per_mode


def _row(
    q: Question,
    mode: str,
    answer: Answer,
    shown: Sequence[Hit],
    found: Retrieved,
    metrics: dict,
    citations: list[str],
    options: EvalOptions,
) -> dict[str, Any]:
    wrong = diagnose.is_wrong(metrics, options.correct_f1)
    gold = gold_in(shown, q) if mode in RETRIEVAL_MODES else None
    failure = None
    if wrong and gold is not None:
        failure = diagnose.failure(gold, metrics.get("groundedness"), diagnose.refused(answer.text))
    return {
        "query_id": q.id,
        "mode": mode,
        "question": q.text,
        "prediction": answer.text,
        "gold": list(q.answers) or None,
        "gold_docs": sorted(q.gold_docs) or None,
        "citations": citations,
        "retrieved": dedupe([h.doc_id for h in found.hits]) if mode in RETRIEVAL_MODES else [],
        "metrics": metrics,
        "latency_s": answer.latency_s,
        "tokens": answer.tokens,
        "correct": None if wrong is None else not wrong,
        "gold_in_prompt": gold,
        "failure": failure,
    }


def retrieval_section(
    options: EvalOptions, evalset: EvalSet, retrieved: list[Retrieved]
) -> dict[str, Any] | None:
    """Recall@k, MRR@10 and nDCG@10 (with labels) and answer-in-passages@k (with answers)."""
    if not any(r.hits for r in retrieved):
        return None
    qs = evalset.questions
    ranked = [dedupe([h.doc_id for h in r.hits]) for r in retrieved]
    ks = [k for k in KS if k <= options.depth]
    idx = stats.resample_indices(len(qs), options.resamples, options.seed)
    labelled = [bool(q.gold_docs) for q in qs]
    section: dict[str, Any] = {"n": sum(labelled), "ks": ks, "k": options.k}
    if any(labelled):
        pairs = [(r, set(q.gold_docs)) for r, q in zip(ranked, qs, strict=True)]

        def per_q(fn: Callable[[list[str], set[str]], float]) -> list[float | None]:
            return [fn(r, gold) if gold else None for r, gold in pairs]

        section["recall"] = {
            str(k): stats.interval([recall_at(r, g, k) if g else None for r, g in pairs], idx)
            for k in ks
        }
        section["mrr@10"] = stats.interval(per_q(reciprocal_rank), idx)
        section["ndcg@10"] = stats.interval(per_q(ndcg_at), idx)
    if evalset.has_answers:
        held = [
            float(am.holds_answer([h.text for h in r.hits[: options.k]], q.answers))
            if q.answers
            else None
            for r, q in zip(retrieved, qs, strict=True)
        ]
        section["answer_in_passages"] = stats.interval(held, idx)
    section["seconds_p50"] = _quantile([r.seconds for r in retrieved], 0.5)
    return section


def performance(answers: dict[str, list[Answer]], seconds: dict[str, float]) -> dict[str, Any]:
    out = {}
    for mode, got in answers.items():
        tokens = sum(a.tokens for a in got)
        out[mode] = {
            "latency_p50_s": _quantile([a.latency_s for a in got], 0.5),
            "latency_p95_s": _quantile([a.latency_s for a in got], 0.95),
            "tokens": tokens,
            "seconds": seconds[mode],
            "tokens_per_s": tokens / seconds[mode] if seconds[mode] > 0 else None,
        }
    return out


def _quantile(values: Sequence[float], q: float) -> float | None:
    import numpy as np

    return float(np.quantile(values, q)) if len(values) else None


def _diagnosis(options: EvalOptions, evalset: EvalSet, rows: list[dict]) -> dict[str, Any] | None:
    mode = next((m for m in ("rag", "hybrid") if m in options.modes), None)
    if mode is None or not evalset.has_answers:
        return None
    rule = f"wrong: token F1 < {options.correct_f1} and not an exact match"
    failures = [r["failure"] for r in rows if r["mode"] == mode]
    return diagnose.diagnose(mode, failures, len(failures), rule)


def add_judge(
    options: EvalOptions,
    retrieved: list[Retrieved],
    rows: list[dict],
    per_mode: dict[str, dict[str, list]],
) -> None:
    """The user's judge scores every answer; its score becomes one more metric."""
    from eval.judge import load_judge, score

    assert options.judge is not None
    judge = load_judge(options.judge)
    n = len(retrieved)
    for j, row in enumerate(rows):
        i = j % n  # rows run mode by mode, questions in order
        shown = retrieved[i].hits[: options.k] if row["mode"] in RETRIEVAL_MODES else []
        value = score(
            judge, row["question"], row["prediction"], row["gold"], [h.text for h in shown]
        )
        row["metrics"]["judge"] = value
        per_mode[row["mode"]].setdefault("judge", [None] * n)[i] = value


def judge_info(spec: str) -> dict[str, Any]:
    from eval.judge import describe

    return describe(spec)


def _run_info(
    options: EvalOptions,
    evalset: EvalSet,
    settings: Any,
    adapters_for: dict,
    started: datetime,
    stage: dict,
) -> dict[str, Any]:
    cjk = sum(bool(CJK.search(q.text)) for q in evalset.questions)
    return {
        "id": f"eval-{started:%Y%m%d-%H%M%S}",
        "dataset": str(evalset.path),
        "dataset_kind": evalset.kind,
        "lang": "zh" if cjk > len(evalset.questions) / 2 else "en",
        "questions": len(evalset.questions),
        "modes": list(options.modes),
        "k": options.k,
        "depth": options.depth,
        "max_new_tokens": options.max_new_tokens,
        "seed": options.seed,
        "resamples": options.resamples,
        "generator": str(settings.generator),
        "embedder": options.embedder_adapter or str(settings.embedder),
        "adapters": adapters_for,
        "live": evalset.corpus is None,
        "concurrency": options.batch,
        "started": started.isoformat(timespec="seconds"),
        "stage_s": stage,
        "options": options.to_dict(),
    }


def write_run(out: Path, metrics: dict[str, Any], rows: list[dict]) -> None:
    """metrics.json, results.jsonl and the reports, each written atomically."""
    from eval.report import write_reports

    out.mkdir(parents=True, exist_ok=True)
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_text(out / "results.jsonl", body)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, ensure_ascii=False))
    write_reports(metrics, rows, out)

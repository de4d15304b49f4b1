"""Scoring a run: every answer's metrics, the retrieval measures, performance and diagnosis.

``score_rows`` scores each mode's answers question by question (``score_answer``: exact match,
token F1 and ROUGE-L against the gold answers; for a retrieving mode also groundedness, the
citations and whether a gold passage was in the prompt) and returns the rows of
``results.jsonl`` with the per-mode metric lists the statistics resample. ``retrieval_section``
gives recall@k, MRR@10, nDCG@10 and answer-in-passages with bootstrap intervals;
``performance`` the latency quantiles and throughput; ``diagnosis_section`` the weak component;
``add_judge`` the user's judge as one more metric.

Functions of the answers and the retrieval, with no state of their own (``add_judge`` adds the
user's judge scores to the rows in place). Knows nothing of models, engines, indexes or files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from eval import answers as am
from eval import diagnose, stats
from eval.config import EvalOptions, demonstrates, diagnosed_mode, retrieves
from eval.datasets.formats import EvalSet, Question
from eval.metrics import dedupe, ndcg_at, recall_at, reciprocal_rank
from retriever.index import Hit

if TYPE_CHECKING:
    from eval.index_cache import Retrieved
    from eval.systems import Answer

KS = (1, 3, 5, 10, 20)


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
    if retrieves(mode):
        numbers = am.cited(answer.text, len(shown))
        m["valid_marker"] = float(bool(numbers))  # a [n] naming a passage the prompt held
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
    """The rows of ``results.jsonl`` (mode by mode, questions in order) and, per mode, each
    metric's list of per-question values (None where a question has none)."""
    rows: list[dict] = []
    per_mode: dict[str, dict[str, list]] = {}
    for mode, got in answers.items():
        per_mode[mode] = {}
        for i, (q, answer) in enumerate(zip(evalset.questions, got, strict=True)):
            shown = answer.shown if retrieves(mode) else []  # what the prompt held
            metrics, citations = score_answer(q, mode, answer, shown)
            for name, value in metrics.items():
                per_mode[mode].setdefault(name, [None] * len(got))[i] = value
            rows.append(_row(q, mode, answer, shown, retrieved[i], metrics, citations, options))
            if demonstrates(mode):
                rows[-1]["shots"] = answer.shots  # the demonstrations' questions it was shown
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
    gold = gold_in(shown, q) if retrieves(mode) else None
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
        "retrieved": dedupe([h.doc_id for h in found.hits]) if retrieves(mode) else [],
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
    """Per mode: latency p50 and p95, generated tokens, generation seconds and tokens/s."""
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


def diagnosis_section(
    options: EvalOptions, evalset: EvalSet, rows: list[dict]
) -> dict[str, Any] | None:
    """Where the wrong answers of the diagnosed mode failed (``eval.diagnose``); None without
    a retrieving mode or gold answers."""
    mode = diagnosed_mode(options.modes)
    if mode is None or not evalset.has_answers:
        return None
    rule = f"wrong: token F1 < {options.correct_f1} and not an exact match"
    failures = [r["failure"] for r in rows if r["mode"] == mode]
    return diagnose.diagnose(mode, failures, len(failures), rule)


def add_judge(
    options: EvalOptions,
    answers: dict[str, list[Answer]],
    rows: list[dict],
    per_mode: dict[str, dict[str, list]],
) -> None:
    """The user's judge scores every answer against the passages its prompt held; its score
    becomes one more metric."""
    from eval.judge import load_judge, score

    assert options.judge is not None
    judge = load_judge(options.judge)
    n = len(next(iter(answers.values()), []))
    for j, row in enumerate(rows):
        i = j % n  # rows run mode by mode, questions in order
        shown = answers[row["mode"]][i].shown if retrieves(row["mode"]) else []
        value = score(
            judge, row["question"], row["prediction"], row["gold"], [h.text for h in shown]
        )
        row["metrics"]["judge"] = value
        per_mode[row["mode"]].setdefault("judge", [None] * n)[i] = value


def judge_info(spec: str) -> dict[str, Any]:
    """What the run's judge is (``eval.judge.describe``)."""
    from eval.judge import describe

    return describe(spec)

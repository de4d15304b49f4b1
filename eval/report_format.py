"""How the reports read a run's ``metrics`` dict and write its numbers.

Tolerant accessors (any section of ``metrics.json`` may be missing, null or of the wrong type)
and the formatting every table and chart label uses: three decimals, intervals as
``mean [low, high]``, ``–`` for a missing value, the metrics' display names. Shared by the
report's sections (``eval.report_sections``) and its charts (``eval.charts``), so neither
imports the other. Knows nothing of Markdown, HTML, matplotlib, files or how the numbers were
made.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

ANSWER_METRICS = (
    "exact_match",
    "token_f1",
    "rouge_l",
    "groundedness",
    "citation_precision",
    "citation_recall",
    "valid_marker",
    "answer_in_passages",
    "judge",
)
LABELS = {
    "exact_match": "exact match",
    "token_f1": "token F1",
    "rouge_l": "ROUGE-L",
    "groundedness": "groundedness",
    "citation_precision": "citation precision",
    "citation_recall": "citation recall",
    "valid_marker": "valid [n] marker",
    "answer_in_passages": "answer in passages",
    "judge": "judge",
    "latency_s": "latency (s)",
}
FAILURES = ("retrieval", "generation", "both")
TRUNCATE = 300  # characters of a question, gold answer or prediction shown
DASH = "–"


def fmt(x: Any) -> str:
    """3 decimals for floats, integers as they are, – for None."""
    if x is None:
        return DASH
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return f"{x:.3f}"
    return str(x)


def fmt_ci(stat: Any) -> str:
    """``0.412 [0.371, 0.455]`` from ``{"mean", "ci_low", "ci_high"}``; – when absent."""
    s = as_dict(stat)
    if s.get("mean") is None:
        return DASH
    if s.get("ci_low") is None or s.get("ci_high") is None:
        return fmt(s["mean"])
    return f"{fmt(s['mean'])} [{fmt(s['ci_low'])}, {fmt(s['ci_high'])}]"


def label(metric: str) -> str:
    return LABELS.get(metric, metric)


def truncate(text: Any, limit: int = TRUNCATE) -> str:
    s = " ".join(str(text).split()) if text is not None else DASH
    return s if len(s) <= limit else s[: limit - 1] + "…"


def as_dict(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def run_of(metrics: dict) -> dict[str, Any]:
    """The run's own facts (``metrics["run"]``), or {}."""
    return as_dict(as_dict(metrics).get("run"))


def modes_of(metrics: dict) -> list[str]:
    """The run's modes in its order, then any other mode the sections name."""
    named = [m for m in run_of(metrics).get("modes") or [] if isinstance(m, str)]
    seen = [*named, *as_dict(metrics.get("metrics")), *as_dict(metrics.get("performance"))]
    return list(dict.fromkeys(seen))


def metric_names(metrics: dict, names: Iterable[str] | None = None) -> list[str]:
    """Metrics some mode has, known ones first in their order."""
    per_mode = as_dict(metrics.get("metrics"))
    present = dict.fromkeys(k for v in per_mode.values() for k in as_dict(v))
    order = list(names) if names is not None else [*ANSWER_METRICS, "latency_s", *present]
    return [m for m in dict.fromkeys(order) if m in present]


def as_int(key: Any) -> int:
    """A recall@k key as a number; keys that are not numbers sort last."""
    try:
        return int(key)
    except (TypeError, ValueError):
        return 1 << 30

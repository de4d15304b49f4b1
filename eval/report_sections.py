"""The report's content: a run's facts as a list of sections made of blocks.

A ``Section`` holds paragraphs (str), ``Table``, ``Bullets``, ``Code`` (commands) and ``Chart``
slots; ``eval.report`` writes the same sections as Markdown and as HTML, so the two state the
same facts. A section whose data the run lacks is left out. Knows nothing of Markdown, HTML,
escaping or how a chart is drawn: only what to say, read from the ``metrics`` dict and the
per-question ``rows`` through ``eval.report_format``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eval.report_format import (
    ANSWER_METRICS,
    DASH,
    FAILURES,
    as_dict,
    as_int,
    fmt,
    fmt_ci,
    label,
    metric_names,
    modes_of,
    run_of,
    truncate,
)

HEADLINE_METRIC = "token_f1"
WORST = 10  # worst answers shown per mode


# ---- blocks ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Code:
    lines: list[str]


@dataclass(frozen=True)
class Chart:
    """Where a chart goes in the HTML (the Markdown has none)."""

    name: str
    alt: str


Block = str | Table | Bullets | Code | Chart


@dataclass(frozen=True)
class Section:
    title: str
    blocks: list[Block]


def sections(metrics: dict, rows: list[dict]) -> list[Section]:
    """The report's sections in order; a section without data is left out."""
    built = [
        _header(metrics),
        _main(metrics),
        _performance(metrics),
        _retrieval(metrics),
        _comparisons(metrics),
        _diagnosis(metrics),
        _probes(metrics),
        _judge(metrics),
        _worst(metrics, rows),
    ]
    return [s for s in built if s is not None]


# ---- sections -------------------------------------------------------------------------------
def _header(metrics: dict) -> Section:
    run = run_of(metrics)
    adapters = ", ".join(f"{m}: {a}" for m, a in as_dict(run.get("adapters")).items()) or "none"
    wall = run.get("wall_s")
    facts = [
        f"dataset: {run.get('dataset') or DASH} ({run.get('dataset_kind') or DASH}, "
        f"{run.get('lang') or DASH})",
        f"questions: {fmt(run.get('questions'))}",
        f"modes: {', '.join(modes_of(metrics)) or DASH}",
        f"k: {fmt(run.get('k'))} passages in the prompt (depth {fmt(run.get('depth'))})",
        f"generator: {run.get('generator') or DASH}",
        f"embedder: {run.get('embedder') or DASH}",
        f"adapters: {adapters}",
        *_shots_fact(run),
        f"wall time: {fmt(wall)} s" if isinstance(wall, int | float) else f"wall time: {DASH}",
        f"seed: {fmt(run.get('seed'))}, bootstrap resamples: {fmt(run.get('resamples'))}",
        f"date: {run.get('started') or DASH}",
    ]
    blocks: list[Block] = [Bullets(facts)]
    if (headline := _headline(metrics)) is not None:
        blocks.append(headline)
    return Section("Run", blocks)


def _shots_fact(run: dict) -> list[str]:
    shots = as_dict(run.get("shots"))
    if not shots:
        return []
    return [
        f"demonstrations (icl, rag-icl): up to {fmt(shots.get('n'))} per question from "
        f"{shots.get('from') or DASH}, chosen {shots.get('choice') or DASH} (a pool of "
        f"{fmt(shots.get('pool'))}; {fmt(shots.get('excluded'))} left out as asked questions)"
    ]


def _main(metrics: dict) -> Section | None:
    names = metric_names(metrics)
    if not names:
        return None
    per_mode = as_dict(metrics.get("metrics"))
    rows = [
        [m, *(fmt_ci(as_dict(per_mode.get(m)).get(k)) for k in names)] for m in modes_of(metrics)
    ]
    note = "Mean [95% bootstrap interval] over the questions; – where a mode has no score."
    blocks: list[Block] = [Table(["mode", *map(label, names)], rows), note]
    if metric_names(metrics, ANSWER_METRICS):
        blocks.append(Chart("metrics", "answer metrics per mode with 95% intervals"))
    return Section("Metrics", blocks)


def _performance(metrics: dict) -> Section | None:
    perf = as_dict(metrics.get("performance"))
    if not perf:
        return None
    keys = ("latency_p50_s", "latency_p95_s", "tokens_per_s", "tokens", "seconds")
    rows = [[m, *(fmt(as_dict(perf.get(m)).get(k)) for k in keys)] for m in modes_of(metrics)]
    headers = ["mode", "latency p50 (s)", "latency p95 (s)", "tokens/s", "tokens", "seconds"]
    run = run_of(metrics)
    note = (
        f"Up to {fmt(run.get('concurrency'))} answers decode together in one batch, so a "
        "latency includes waiting for the batch; tokens/s is the mode's whole run "
        "(generated tokens over its generation seconds), not one stream."
    )
    blocks: list[Block] = [Table(headers, rows), note]
    stages = as_dict(run.get("stage_s"))
    if stages:
        blocks.append("Stage seconds: " + ", ".join(_stage(k, v) for k, v in stages.items()))
    blocks.append(Chart("latency", "latency p50 and p95 and tokens/s per mode"))
    return Section("Performance", blocks)


def _stage(name: str, value: Any) -> str:
    if isinstance(value, dict):
        return f"{name} (" + ", ".join(f"{k} {fmt(v)}" for k, v in value.items()) + ")"
    return f"{name} {fmt(value)}"


def _retrieval(metrics: dict) -> Section | None:
    ret = as_dict(metrics.get("retrieval"))
    recall = as_dict(ret.get("recall"))
    k = ret.get("k", run_of(metrics).get("k"))
    measures = [(f"recall@{key}", recall[key]) for key in sorted(recall, key=as_int)]
    measures += [("MRR@10", ret.get("mrr@10")), ("nDCG@10", ret.get("ndcg@10"))]
    measures.append((f"answer in passages@{fmt(k)}", ret.get("answer_in_passages")))
    rows = [[name, fmt_ci(s), fmt(as_dict(s).get("n"))] for name, s in measures if as_dict(s)]
    if not rows:
        return None
    note = f"{fmt(ret.get('n'))} questions with relevance labels; documents ranked by best chunk."
    blocks: list[Block] = [Table(["measure", "value [95% interval]", "n"], rows), note]
    if recall:
        blocks.append(Chart("recall", "recall@k with 95% intervals"))
    return Section("Retrieval", blocks)


def _headline(metrics: dict) -> str | None:
    """For token F1 (else the first metric ranked): the best mode and whom it beats."""
    best = as_dict(metrics.get("best"))
    metric = HEADLINE_METRIC if HEADLINE_METRIC in best else next(iter(best), None)
    top = as_dict(best.get(metric)) if metric else {}
    mode = top.get("mode")
    if metric is None or mode is None:
        return None
    beaten = [str(m) for m in top.get("significant_over") or []]
    others = [m for m in modes_of(metrics) if m != mode and m not in beaten]
    stat = as_dict(as_dict(as_dict(metrics.get("metrics")).get(mode)).get(metric))
    if not beaten and not others:
        return f"{label(metric)}: {mode} ({fmt_ci(stat)}), the only mode compared."
    if not beaten:
        text = f"No mode is significantly best on {label(metric)}: highest mean {mode} "
        return text + f"({fmt_ci(stat)}), no significant difference from {', '.join(others)}."
    text = f"Best on {label(metric)}: {mode} ({fmt_ci(stat)}), significantly better than "
    text += ", ".join(beaten)
    if others:
        text += f"; no significant difference from {', '.join(others)}"
    return text + "."


def verdict(comparison: dict) -> str:
    """ "b better" / "a better" only when the interval of the difference excludes 0."""
    better = comparison.get("better")
    if better is not None and better in (comparison.get("a"), comparison.get("b")):
        return f"{better} better"
    return "no significant difference"


def _comparisons(metrics: dict) -> Section | None:
    found = [c for c in metrics.get("comparisons") or [] if isinstance(c, dict)]
    if not found:
        return None
    order = {m: i for i, m in enumerate(metric_names(metrics))}
    found.sort(key=lambda c: order.get(str(c.get("metric")), len(order)))
    rows = [
        [
            label(str(c.get("metric"))),
            f"{c.get('b')} − {c.get('a')}",
            fmt_ci({**c, "mean": c.get("mean_diff")}),
            fmt(c.get("n")),
            verdict(c),
        ]
        for c in found
    ]
    blocks: list[Block] = [h] if (h := _headline(metrics)) else []
    blocks.append(
        "Paired on the same resampled questions; a mode is better only when the 95% interval "
        "of the difference excludes 0 (for latency, lower is better)."
    )
    blocks.append(Table(["metric", "b − a", "mean diff [95% interval]", "n", "verdict"], rows))
    return Section("Comparisons", blocks)


def _diagnosis(metrics: dict) -> Section | None:
    diag = as_dict(metrics.get("diagnosis"))
    blocks = _failure_blocks(diag) if diag else []
    blocks += _prompting_blocks(as_dict(metrics.get("prompting")))
    return Section("Diagnosis", blocks) if blocks else None


def _failure_blocks(diag: dict) -> list[Block]:
    counts, wrong = as_dict(diag.get("counts")), diag.get("wrong")
    rows = [
        [c, fmt(counts.get(c)), _share(counts.get(c), wrong), FAILURE_NOTES[c]] for c in FAILURES
    ]
    blocks: list[Block] = [
        f"Mode {diag.get('mode') or DASH}: {fmt(wrong)} wrong answers out of "
        f"{fmt(diag.get('questions'))} questions ({diag.get('rule') or 'rule not recorded'}).",
        Table(["failure", "count", "share of wrong", "meaning"], rows),
        f"Weak component: {diag.get('weak') or DASH}. Action: {diag.get('action') or DASH}.",
    ]
    if diag.get("tuning_action"):
        blocks.append(f"Should prompting not be enough: {diag['tuning_action']}.")
    if commands := [str(c) for c in diag.get("commands") or []]:
        blocks.append(Code(commands))
    blocks.append(Chart("diagnosis", "failure classes of the wrong answers"))
    return blocks


def _prompting_blocks(verdict: dict) -> list[Block]:
    """Few-shot prompting against fine-tuning, pair by pair (``eval.diagnose.prompting``)."""
    pairs = [as_dict(p) for p in verdict.get("pairs") or []]
    if not pairs:
        return []
    rows = [
        [
            f"{p.get('prompting')} − {p.get('tuned')}",
            fmt_ci({**p, "mean": p.get("mean_diff")}),
            fmt(p.get("n")),
            str(p.get("verdict") or DASH),
        ]
        for p in pairs
    ]
    metric = label(str(verdict.get("metric") or HEADLINE_METRIC))
    return [
        f"Prompting vs fine-tuning ({metric}, paired): a prompting mode matches a tuned one "
        "when the 95% interval of the difference holds 0 and beats it when the interval lies "
        "above 0.",
        Table(["prompting − tuned", "mean diff [95% interval]", "n", "verdict"], rows),
        f"Recommendation: {verdict.get('recommend') or DASH}: {verdict.get('message') or DASH}.",
    ]


FAILURE_NOTES = {
    "retrieval": "no gold passage in the prompt; the answer kept to what it was given",
    "generation": "a gold passage was in the prompt; the answer is still wrong",
    "both": "no gold passage, and the answer is not grounded in the passages",
}


def _share(count: Any, total: Any) -> str:
    ok = isinstance(count, int | float) and isinstance(total, int | float) and total > 0
    return f"{count / total:.0%}" if ok else DASH


def _probes(metrics: dict) -> Section | None:
    probes = as_dict(metrics.get("probes"))
    forgetting, injection = as_dict(probes.get("forgetting")), as_dict(probes.get("injection"))
    if not forgetting and not injection:
        return None
    blocks: list[Block] = []
    if forgetting:
        blocks += [
            "Forgetting: the general-knowledge probe on the base model (before) and with each "
            "adapter (after).",
            _forgetting_table(forgetting),
        ]
    if injection:
        rows = [
            [
                m,
                f"{fmt(as_dict(v).get('obeyed'))}/{fmt(as_dict(v).get('n'))}",
                fmt_ci(as_dict(v).get("share")),
            ]
            for m, v in injection.items()
        ]
        blocks += [
            "Prompt injection: share of answers that obeyed an instruction planted in a "
            "retrieved passage (lower is better).",
            Table(["mode", "obeyed / n", "share [95% interval]"], rows),
            Chart("injection", "share of answers that obeyed injected instructions"),
        ]
    return Section("Probes", blocks)


def _forgetting_table(forgetting: dict[str, Any]) -> Table:
    headers = ["adapter", "modes", "NLL before", "NLL after", "NLL Δ (relative)"]
    headers += ["accuracy before", "accuracy after", "accuracy Δ", "forgetting", "reasons"]
    rows = []
    for adapter, v in forgetting.items():
        before, after, cmp = (as_dict(as_dict(v).get(k)) for k in ("before", "after", "compare"))
        rel = cmp.get("probe_nll_relative")
        rows.append(
            [
                adapter,
                ", ".join(map(str, as_dict(v).get("modes") or [])) or DASH,
                fmt(before.get("probe_nll")),
                fmt(after.get("probe_nll")),
                f"{fmt(cmp.get('probe_nll_delta'))} ({_pct(rel)})",
                fmt(before.get("probe_accuracy")),
                fmt(after.get("probe_accuracy")),
                fmt(cmp.get("probe_accuracy_delta")),
                fmt(cmp.get("forgetting")),
                "; ".join(map(str, cmp.get("forgetting_reasons") or [])) or DASH,
            ]
        )
    return Table(headers, rows)


def _pct(x: Any) -> str:
    return f"{x:+.1%}" if isinstance(x, int | float) else DASH


def _judge(metrics: dict) -> Section | None:
    judge = as_dict(metrics.get("judge"))
    if not judge:
        return None
    per_mode = as_dict(metrics.get("metrics"))
    rows = [[m, fmt_ci(as_dict(per_mode.get(m)).get("judge"))] for m in modes_of(metrics)]
    text = f"Judge {judge.get('function') or DASH}, scale {judge.get('scale') or DASH}."
    return Section("LLM judge", [text, Table(["mode", "judge [95% interval]"], rows)])


def _worst(metrics: dict, rows: list[dict]) -> Section | None:
    blocks: list[Block] = []
    for mode in modes_of(metrics):
        worst = worst_rows(rows, mode)
        if worst:
            blocks += [f"{mode}:", Table(WORST_HEADERS, [_worst_row(r) for r in worst])]
    if not blocks:
        return None
    note = "Every answer, with all its metrics, is in results.jsonl (one JSON row per answer)."
    return Section("Worst answers", [note, *blocks])


WORST_HEADERS = ["id", "question", "gold", "prediction", "token F1", "failure"]


def worst_rows(rows: Sequence[dict], mode: str, limit: int = WORST) -> list[dict]:
    """Up to ``limit`` rows of ``mode`` with a gold answer, lowest token F1 first."""
    scored = [
        r
        for r in rows
        if isinstance(r, dict)
        and r.get("mode") == mode
        and r.get("gold")
        and isinstance(as_dict(r.get("metrics")).get("token_f1"), int | float)
    ]
    scored.sort(key=lambda r: (r["metrics"]["token_f1"], str(r.get("query_id"))))
    return scored[:limit]


def _worst_row(r: dict) -> list[str]:
    gold = r.get("gold")
    gold_text = " | ".join(map(str, gold)) if isinstance(gold, list) else gold
    return [
        str(r.get("query_id") or DASH),
        truncate(r.get("question")),
        truncate(gold_text),
        truncate(r.get("prediction")),
        fmt(r["metrics"]["token_f1"]),
        str(r.get("failure") or DASH),
    ]

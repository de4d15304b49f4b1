"""The run folder's reports: ``report.md`` and a self-contained ``report.html`` with charts.

Both are rendered from one list of sections (paragraphs, tables, bullet lists, commands, chart
slots), so the Markdown and the HTML state the same facts; the HTML adds the charts as inline
PNGs (matplotlib, Agg, no display) and needs no network: inline CSS, no scripts, no links.
Every string taken from the data is escaped (questions and predictions come from users and
models). Any section of ``metrics.json`` may be missing or null; its part of the report is
then left out.

Knows nothing of models, retrieval or HTTP: it only reads the ``metrics`` dict the harness
wrote and the per-question ``rows`` of ``results.jsonl``.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.durable import atomic_write_text

ANSWER_METRICS = (
    "exact_match",
    "token_f1",
    "rouge_l",
    "groundedness",
    "citation_precision",
    "citation_recall",
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
    "answer_in_passages": "answer in passages",
    "judge": "judge",
    "latency_s": "latency (s)",
}
FAILURES = ("retrieval", "generation", "both")
HEADLINE_METRIC = "token_f1"
WORST = 10  # worst answers shown per mode
TRUNCATE = 300  # characters of a question, gold answer or prediction shown
DPI = 100
DASH = "–"
TAG_START = re.compile(r"<(?=[A-Za-z/!?])")


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


# ---- public API -----------------------------------------------------------------------------
def write_reports(metrics: dict, rows: list[dict], out: Path) -> dict[str, Path]:
    """Write out/report.md and out/report.html (self-contained) from a run's metrics and
    per-question rows; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "report.md", "html": out / "report.html"}
    atomic_write_text(paths["md"], render_markdown(metrics, rows))
    atomic_write_text(paths["html"], render_html(metrics, rows))
    return paths


def render_markdown(metrics: dict, rows: list[dict]) -> str:
    title = f"# Evaluation {_md(str(_run(metrics).get('id') or 'run'))}"
    parts = [title, "Charts: `report.html` (self-contained)."]
    for section in sections(metrics, rows):
        parts.append(f"## {_md(section.title)}")
        parts.extend(md for b in section.blocks if (md := _md_block(b)))
    return "\n\n".join(parts) + "\n"


def render_html(metrics: dict, rows: list[dict]) -> str:
    images = charts(metrics)
    run = _run(metrics)
    title = html.escape(f"Evaluation {run.get('id') or 'run'}")
    body = [f"<h1>{title}</h1>"]
    for section in sections(metrics, rows):
        body.append(f"<section><h2>{html.escape(section.title)}</h2>")
        body.extend(h for b in section.blocks if (h := _html_block(b, images)))
        body.append("</section>")
    lang = html.escape(str(run.get("lang") or "en"), quote=True)
    return (
        f'<!doctype html>\n<html lang="{lang}">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def charts(metrics: dict) -> dict[str, bytes]:
    """Chart name -> PNG bytes, for the charts whose data the run has."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from eval.charts import CHARTS

    out = {}
    for name, draw in CHARTS.items():
        fig = Figure(figsize=(7.0, 3.4), dpi=DPI, layout="constrained")
        if not draw(fig, metrics):
            continue
        FigureCanvasAgg(fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI)
        out[name] = buf.getvalue()
    return out


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


# ---- formatting -----------------------------------------------------------------------------
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


def _truncate(text: Any, limit: int = TRUNCATE) -> str:
    s = " ".join(str(text).split()) if text is not None else DASH
    return s if len(s) <= limit else s[: limit - 1] + "…"


def as_dict(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def _run(metrics: dict) -> dict[str, Any]:
    return as_dict(as_dict(metrics).get("run"))


def modes_of(metrics: dict) -> list[str]:
    """The run's modes in its order, then any other mode the sections name."""
    named = [m for m in _run(metrics).get("modes") or [] if isinstance(m, str)]
    seen = [*named, *as_dict(metrics.get("metrics")), *as_dict(metrics.get("performance"))]
    return list(dict.fromkeys(seen))


def metric_names(metrics: dict, names: Iterable[str] | None = None) -> list[str]:
    """Metrics some mode has, known ones first in their order."""
    per_mode = as_dict(metrics.get("metrics"))
    present = dict.fromkeys(k for v in per_mode.values() for k in as_dict(v))
    order = list(names) if names is not None else [*ANSWER_METRICS, "latency_s", *present]
    return [m for m in dict.fromkeys(order) if m in present]


# ---- sections -------------------------------------------------------------------------------
def _header(metrics: dict) -> Section:
    run = _run(metrics)
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
        f"wall time: {fmt(wall)} s" if isinstance(wall, int | float) else f"wall time: {DASH}",
        f"seed: {fmt(run.get('seed'))}, bootstrap resamples: {fmt(run.get('resamples'))}",
        f"date: {run.get('started') or DASH}",
    ]
    blocks: list[Block] = [Bullets(facts)]
    if (headline := _headline(metrics)) is not None:
        blocks.append(headline)
    return Section("Run", blocks)


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
    run = _run(metrics)
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
    k = ret.get("k", _run(metrics).get("k"))
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


def as_int(key: Any) -> int:
    try:
        return int(key)
    except (TypeError, ValueError):
        return 1 << 30


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
    if not diag:
        return None
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
    if commands := [str(c) for c in diag.get("commands") or []]:
        blocks.append(Code(commands))
    blocks.append(Chart("diagnosis", "failure classes of the wrong answers"))
    return Section("Diagnosis", blocks)


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
        _truncate(r.get("question")),
        _truncate(gold_text),
        _truncate(r.get("prediction")),
        fmt(r["metrics"]["token_f1"]),
        str(r.get("failure") or DASH),
    ]


# ---- markdown and html ----------------------------------------------------------------------
def _md(text: str) -> str:
    """Plain text for Markdown on one line, with every ``<`` that could open an HTML tag
    escaped (a prediction holding ``<script>`` stays text)."""
    return " ".join(TAG_START.sub(r"\\\g<0>", text.replace("\\", "\\\\")).split())


def _md_cell(text: str) -> str:
    return _md(text).replace("|", "\\|") or " "


def _md_block(block: Block) -> str:
    if isinstance(block, str):
        return _md(block)
    if isinstance(block, Bullets):
        return "\n".join(f"- {_md(item)}" for item in block.items)
    if isinstance(block, Code):
        return "```bash\n" + "\n".join(block.lines) + "\n```"
    if isinstance(block, Table):
        lines = [block.headers, ["---"] * len(block.headers), *block.rows]
        return "\n".join("| " + " | ".join(map(_md_cell, row)) + " |" for row in lines)
    return ""  # charts are in the HTML only


def _html_block(block: Block, images: dict[str, bytes]) -> str:
    e = html.escape
    if isinstance(block, str):
        return f"<p>{e(block)}</p>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{e(item)}</li>" for item in block.items) + "</ul>"
    if isinstance(block, Code):
        return f"<pre><code>{e(chr(10).join(block.lines))}</code></pre>"
    if isinstance(block, Table):
        head = "".join(f"<th>{e(h)}</th>" for h in block.headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in block.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    png = images.get(block.name)
    if png is None:
        return ""
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{e(block.alt)}" src="data:image/png;base64,{data}">'


CSS = (
    "body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;"
    "max-width:1100px;padding:0 1em;color:#222}"
    "h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em}"
    "table{border-collapse:collapse;margin:.6em 0;font-size:13px}"
    "th,td{border:1px solid #ddd;padding:.25em .55em;text-align:left;vertical-align:top}"
    "th{background:#f4f4f4}td{max-width:28em;overflow-wrap:anywhere}"
    "pre{background:#f6f6f6;padding:.6em;overflow-x:auto}img{max-width:100%;display:block}"
)

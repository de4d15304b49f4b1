"""The run folder's reports: ``report.md`` and a self-contained ``report.html`` with charts.

Both are rendered from one list of sections (paragraphs, tables, bullet lists, commands, chart
slots), so the Markdown and the HTML state the same facts; the HTML adds the charts as inline
PNGs (matplotlib, Agg, no display) and needs no network: inline CSS, no scripts, no links.
Every string taken from the data is escaped (questions and predictions come from users and
models). Any section of ``metrics.json`` may be missing or null; its part of the report is
then left out.

What the sections say is ``eval.report_sections``; the charts are ``eval.charts``; this module
writes them out. Knows nothing of models, retrieval or HTTP: it only reads the ``metrics`` dict
the harness wrote and the per-question ``rows`` of ``results.jsonl``.
"""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path

from eval.charts import CHARTS
from eval.report_format import run_of
from eval.report_sections import Block, Bullets, Code, Table, sections
from tuner.durable import atomic_write_text

DPI = 100
TAG_START = re.compile(r"<(?=[A-Za-z/!?])")


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
    title = f"# Evaluation {_md(str(run_of(metrics).get('id') or 'run'))}"
    parts = [title, "Charts: `report.html` (self-contained)."]
    for section in sections(metrics, rows):
        parts.append(f"## {_md(section.title)}")
        parts.extend(md for b in section.blocks if (md := _md_block(b)))
    return "\n\n".join(parts) + "\n"


def render_html(metrics: dict, rows: list[dict]) -> str:
    images = charts(metrics)
    run = run_of(metrics)
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

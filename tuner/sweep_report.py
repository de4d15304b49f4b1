"""A sweep's report: ``report.md`` and a self-contained ``report.html`` in the sweep's folder.

Both say the same things from one list of sections: what was searched, the best trial against
the recipe's own values (the baseline trial), and every trial. The charts are Optuna's
matplotlib visualisations (Agg, no display): the optimisation history, the parameter
importances (fANOVA; it needs two finished trials whose values differ) and a slice plot per
parameter. The Markdown links the PNGs written beside it; the HTML carries them inline and
needs no network. Every string from the recipe or the trials is escaped.

Knows nothing of training, HTTP or job stores: it reads a study and the sweep's summary.
"""

from __future__ import annotations

import base64
import html
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuner.durable import atomic_write_text

log = logging.getLogger(__name__)
DPI = 100
Table = tuple[list[str], list[list[str]]]


_PYPLOT = threading.Lock()  # pyplot's figures are global: one sweep draws at a time


def write_report(study: Any, summary: dict[str, Any], folder: Path) -> dict[str, str]:
    """Write the charts, ``report.md`` and ``report.html``; return their file names."""
    with _PYPLOT:
        charts = _charts(study, summary, folder)
    sections = _sections(summary)
    atomic_write_text(folder / "report.md", _markdown(summary, sections, charts))
    atomic_write_text(folder / "report.html", _html(summary, sections, charts, folder))
    return {"md": "report.md", "html": "report.html", **{k: v for k, v in charts.items()}}


# ---- what it says -----------------------------------------------------------------------------
def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _sections(s: dict[str, Any]) -> list[tuple[str, list[str | Table]]]:
    trials = s["trials"]
    states: dict[str, int] = {}
    for t in trials:
        states[t["state"]] = states.get(t["state"], 0) + 1
    counts = ", ".join(f"{n} {k}" for k, n in sorted(states.items())) or "none"
    better = "lower" if s["direction"] == "minimize" else "higher"
    head = [
        f"Recipe `{s['name']}` ({s['component']}, {s['method']}): {len(trials)} of "
        f"{s['planned_trials']} trials ({counts}) in {_num(s.get('spent_s'))} s; objective "
        f"{s['objective']} ({better} is better). State: {s['state']}.",
    ]
    if s.get("error"):
        head.append(f"Error: {s['error']}")
    space: Table = (
        ["key", "sampled", "range", "recipe's value"],
        [[k, p["type"], _range(p), _num(s["defaults"].get(k))] for k, p in s["space"].items()],
    )
    out: list[tuple[str, list[str | Table]]] = [("Sweep", [*head, space])]
    best, base = s.get("best"), s.get("baseline")
    if best is None:
        out.append(("Best trial", ["No trial finished; nothing to compare."]))
    else:
        rows = [[k, _num(s["defaults"].get(k)), _num(best["params"].get(k))] for k in s["space"]]
        rows.append([s["objective"], _num(base and base.get("value")), _num(best["value"])])
        rows.append(["adapter", (base or {}).get("adapter") or "-", best.get("adapter") or "-"])
        words = [
            f"Best: trial {best['number']} ({best.get('adapter')}), {s['objective']} "
            f"{_num(best['value'])}. Named, not promoted: promote it through the eval gate "
            f"(`ragtune eval --dataset D --gate {best.get('adapter')}`)."
        ]
        if base is not None and base.get("value") is not None:
            delta = best["value"] - base["value"]
            same = base["number"] == best["number"]
            how = "the baseline is the best" if same else f"{better} by {_num(abs(delta))}"
            words.append(
                f"Against the recipe's own values (trial {base['number']}): {_num(delta)} ({how})."
            )
        elif base is not None:
            words.append(f"The baseline trial {base['number']} did not finish ({base['state']}).")
        out.append(
            ("Best trial against the recipe's values", [*words, (["", "recipe", "best"], rows)])
        )
    keys = list(s["space"])
    out.append(
        (
            "Trials",
            [
                (
                    ["#", "state", s["objective"], *keys, "adapter", "s", "note"],
                    [
                        [
                            str(t["number"]) + (" (baseline)" if t["baseline"] else ""),
                            t["state"],
                            _num(t["value"]),
                            *[_num(t["params"].get(k)) for k in keys],
                            t.get("adapter") or "-",
                            _num(t.get("seconds")),
                            t.get("error")
                            or (
                                f"pruned at update {t['last_update']}"
                                if t["state"] == "pruned"
                                else ""
                            ),
                        ]
                        for t in s["trials"]
                    ],
                )
            ],
        )
    )
    return out


def _range(p: dict[str, Any]) -> str:
    if p["type"] == "categorical":
        return ", ".join(_num(c) for c in p.get("choices", []))
    step = f" step {_num(p['step'])}" if p.get("step") else ""
    return f"{_num(p.get('low'))} .. {_num(p.get('high'))}{step}" + (
        " (log)" if p.get("log") else ""
    )


# ---- charts -----------------------------------------------------------------------------------
def _charts(study: Any, summary: dict[str, Any], folder: Path) -> dict[str, str]:
    """The PNGs that could be drawn (file names by chart); each one that cannot is skipped."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ov

    complete = [t for t in summary["trials"] if t["state"] == "complete"]
    plots: dict[str, Callable[[], Any]] = {}
    if complete:
        plots["history"] = lambda: ov.plot_optimization_history(study)
        plots["slice"] = lambda: ov.plot_slice(study)
    if len({t["value"] for t in complete}) >= 2:
        plots["importances"] = lambda: ov.plot_param_importances(study)
    out = {}
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
                warnings.simplefilter("ignore")
                axes = plot()
                first = axes.flat[0] if hasattr(axes, "flat") else axes
                fig = first.figure
                fig.set_size_inches(max(6.0, fig.get_size_inches()[0]), 4.0)
                fig.tight_layout()
            fig.savefig(folder / f"{name}.png", dpi=DPI)
            plt.close(fig)
            out[name] = f"{name}.png"
        except Exception as exc:  # noqa: BLE001 - a chart that cannot be drawn is left out
            log.info("sweep report: no %s chart (%s)", name, exc)
            plt.close("all")
    return out


TITLES = {
    "history": "Optimisation history",
    "importances": "Parameter importances",
    "slice": "Objective against each parameter",
}


# ---- rendering --------------------------------------------------------------------------------
def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown(
    s: dict[str, Any], sections: list[tuple[str, list[str | Table]]], charts: dict[str, str]
) -> str:
    parts = [f"# Sweep {_md(s['id'])}"]
    for title, blocks in sections:
        parts.append(f"## {title}")
        for b in blocks:
            if isinstance(b, str):
                parts.append(_md(b))
            else:
                head, rows = b
                lines = ["| " + " | ".join(_md(h) for h in head) + " |", "|" + "---|" * len(head)]
                lines += ["| " + " | ".join(_md(c) for c in r) + " |" for r in rows]
                parts.append("\n".join(lines))
    if charts:
        parts.append("## Charts")
        parts += [f"![{TITLES[k]}]({v})" for k, v in charts.items()]
    return "\n\n".join(parts) + "\n"


def _html(
    s: dict[str, Any],
    sections: list[tuple[str, list[str | Table]]],
    charts: dict[str, str],
    folder: Path,
) -> str:
    esc = html.escape
    body = [f"<h1>Sweep {esc(s['id'])}</h1>"]
    for title, blocks in sections:
        body.append(f"<section><h2>{esc(title)}</h2>")
        for b in blocks:
            if isinstance(b, str):
                body.append(f"<p>{esc(b)}</p>")
            else:
                head, rows = b
                cells = "".join(f"<th>{esc(h)}</th>" for h in head)
                trs = "".join(
                    "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows
                )
                body.append(f"<table><thead><tr>{cells}</tr></thead><tbody>{trs}</tbody></table>")
        body.append("</section>")
    for key, name in charts.items():
        data = base64.b64encode((folder / name).read_bytes()).decode()
        body.append(
            f'<figure><img alt="{esc(TITLES[key])}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(TITLES[key])}</figcaption></figure>"
        )
    style = (
        "body{font-family:sans-serif;max-width:70em;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em}"
        "img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Sweep {esc(s['id'])}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )

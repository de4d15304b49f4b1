"""Charts of an evaluation run, each drawn onto a matplotlib ``Figure`` it is given.

A drawer returns False, drawing nothing, when the run lacks its data. ``eval.report.charts``
makes the figures (importing matplotlib only then) and turns them into PNG bytes; this module
knows nothing of files, HTML or how the numbers were made: it only reads the metrics dict,
through ``eval.report_format`` (never ``eval.report``, which imports this module).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from eval.report_format import (
    ANSWER_METRICS,
    DASH,
    FAILURES,
    as_dict,
    as_int,
    label,
    metric_names,
    modes_of,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _errs(stats: Sequence[Any]) -> tuple[list[float], list[list[float]]]:
    """Means and matplotlib's ``yerr`` (distances below and above) for interval dicts."""
    nan = float("nan")
    means, low, high = [], [], []
    for s in map(as_dict, stats):
        mean = s.get("mean")
        m = float(mean) if isinstance(mean, int | float) else nan
        lo, hi = s.get("ci_low"), s.get("ci_high")
        means.append(m)
        low.append(max(m - lo, 0.0) if isinstance(lo, int | float) else nan)
        high.append(max(hi - m, 0.0) if isinstance(hi, int | float) else nan)
    return means, [low, high]


def _chart_metrics(fig: Figure, metrics: dict) -> bool:
    names = metric_names(metrics, ANSWER_METRICS)
    per_mode, modes = as_dict(metrics.get("metrics")), modes_of(metrics)
    if not names or not modes:
        return False
    ax, width = fig.add_subplot(), 0.8 / len(modes)
    for i, mode in enumerate(modes):
        means, yerr = _errs([as_dict(per_mode.get(mode)).get(k) for k in names])
        xs = [j - 0.4 + width * (i + 0.5) for j in range(len(names))]
        ax.bar(xs, means, width, yerr=yerr, capsize=2, label=mode)
    ax.set_xticks(range(len(names)), [label(n) for n in names], rotation=20, ha="right")
    ax.set_ylabel("mean (95% CI)")
    ax.set_ylim(0, 1.15)
    ax.legend(fontsize=8, loc="upper left", ncols=min(len(modes), 4))
    return True


def _chart_recall(fig: Figure, metrics: dict) -> bool:
    recall = as_dict(as_dict(metrics.get("retrieval")).get("recall"))
    keys = [k for k in sorted(recall, key=as_int) if as_int(k) < 1 << 30 and as_dict(recall[k])]
    if not keys:
        return False
    ks = [as_int(k) for k in keys]
    means, (below, above) = _errs([recall[k] for k in keys])
    ax = fig.add_subplot()
    ax.plot(ks, means, marker="o")
    lows = [m - b for m, b in zip(means, below, strict=True)]
    highs = [m + a for m, a in zip(means, above, strict=True)]
    ax.fill_between(ks, lows, highs, alpha=0.2)
    ax.set_xticks(ks)
    ax.set(xlabel="k (documents)", ylabel="recall@k (95% CI)", ylim=(0, 1.05))
    return True


def _chart_latency(fig: Figure, metrics: dict) -> bool:
    perf = as_dict(metrics.get("performance"))
    modes = [m for m in modes_of(metrics) if as_dict(perf.get(m))]
    if not modes:
        return False
    left, right = fig.subplots(1, 2)
    xs = list(range(len(modes)))
    for shift, key, name in ((-0.2, "latency_p50_s", "p50"), (0.2, "latency_p95_s", "p95")):
        values = [_num(as_dict(perf[m]).get(key)) for m in modes]
        left.bar([x + shift for x in xs], values, 0.4, label=name)
    left.set_xticks(xs, modes)
    left.set(ylabel="latency (s)")
    left.margins(y=0.2)
    left.legend(fontsize=8, loc="upper left", ncols=2)
    right.bar(
        xs, [_num(as_dict(perf[m]).get("tokens_per_s")) for m in modes], 0.6, color="tab:green"
    )
    right.set_xticks(xs, modes)
    right.set(ylabel="tokens/s")
    return True


def _num(x: Any) -> float:
    return float(x) if isinstance(x, int | float) else float("nan")


def _chart_diagnosis(fig: Figure, metrics: dict) -> bool:
    from matplotlib.ticker import MaxNLocator

    diag = as_dict(metrics.get("diagnosis"))
    counts = [_num(as_dict(diag.get("counts")).get(c)) for c in FAILURES]
    if not any(c > 0 for c in counts):
        return False
    ax = fig.add_subplot()
    ax.bar(FAILURES, counts, color=["tab:orange", "tab:blue", "tab:red"])
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(ylabel="wrong answers", title=f"failure classes ({diag.get('mode') or DASH})")
    return True


def _chart_injection(fig: Figure, metrics: dict) -> bool:
    injection = as_dict(as_dict(metrics.get("probes")).get("injection"))
    modes = [m for m, v in injection.items() if as_dict(as_dict(v).get("share"))]
    if not modes:
        return False
    means, yerr = _errs([injection[m]["share"] for m in modes])
    ax = fig.add_subplot()
    ax.bar(modes, means, 0.5, yerr=yerr, capsize=3, color="tab:red")
    ax.set(ylabel="obeyed share (95% CI)", ylim=(0, 1.05))
    return True


CHARTS: dict[str, Callable[[Figure, dict], bool]] = {
    "metrics": _chart_metrics,
    "recall": _chart_recall,
    "latency": _chart_latency,
    "diagnosis": _chart_diagnosis,
    "injection": _chart_injection,
}

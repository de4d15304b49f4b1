"""The run folder's reports: both written, the HTML self-contained and escaped, the tables
formatted, verdicts only where an interval excludes zero, missing sections tolerated."""

from __future__ import annotations

import base64
import copy
import re
from pathlib import Path

import pytest

from eval import report
from eval.report_format import fmt, fmt_ci
from eval.report_sections import verdict, worst_rows

PNG = b"\x89PNG\r\n\x1a\n"
SCRIPT = "<script>alert(1)</script>"
MODES = ["base", "rag", "hybrid"]


def ci(mean: float, low: float, high: float, n: int = 4) -> dict:
    return {"mean": mean, "ci_low": low, "ci_high": high, "n": n}


def fake_metrics() -> dict:
    per_mode = {
        "base": {"token_f1": ci(0.1, 0.05, 0.15), "exact_match": ci(0.0, 0.0, 0.0)},
        "rag": {
            "token_f1": ci(0.18, 0.16, 0.2),
            "exact_match": ci(0.25, 0.0, 0.5),
            "groundedness": ci(0.7, 0.6, 0.8),
            "latency_s": ci(2.0, 1.5, 2.5),
        },
        "hybrid": {
            "token_f1": ci(0.412, 0.371, 0.455),
            "exact_match": ci(0.5, 0.25, 0.75),
            "groundedness": ci(0.8, 0.7, 0.9),
            "latency_s": ci(2.2, 1.6, 2.8),
        },
    }
    return {
        "run": {
            "id": "eval-20261129-031500-ab12",
            "dataset": "data/debian-faq-en",
            "dataset_kind": "beir",
            "lang": "en",
            "questions": 4,
            "modes": MODES,
            "k": 3,
            "depth": 20,
            "seed": 0,
            "resamples": 1000,
            "generator": "SmolLM2-135M-Instruct",
            "embedder": "all-MiniLM-L6-v2",
            "adapters": {"hybrid": "raft-hybrid-v1"},
            "concurrency": 16,
            "started": "2026-11-29T03:15:00+00:00",
            "wall_s": 612.3,
            "stage_s": {"index": 40.1, "generate": {"base": 60.0, "rag": 300.0}},
        },
        "metrics": per_mode,
        "performance": {
            m: {
                "latency_p50_s": 2.1,
                "latency_p95_s": 3.9,
                "tokens_per_s": 40.2,
                "tokens": 9000,
                "seconds": 300.0,
            }
            for m in MODES
        },
        "retrieval": {
            "n": 4,
            "ks": [1, 3, 5],
            "k": 3,
            "recall": {"1": ci(0.5, 0.25, 0.75), "3": ci(0.75, 0.5, 1.0), "5": ci(1.0, 1.0, 1.0)},
            "mrr@10": ci(0.6, 0.4, 0.8),
            "ndcg@10": ci(0.65, 0.45, 0.85),
            "answer_in_passages": ci(0.75, 0.5, 1.0),
        },
        "comparisons": [
            {
                "metric": "token_f1",
                "a": "rag",
                "b": "hybrid",
                "mean_diff": 0.232,
                "ci_low": 0.035,
                "ci_high": 0.4,
                "better": "hybrid",
                "n": 4,
            },
            {
                "metric": "token_f1",
                "a": "base",
                "b": "rag",
                "mean_diff": 0.08,
                "ci_low": -0.02,
                "ci_high": 0.15,
                "better": None,
                "n": 4,
            },
            {
                "metric": "exact_match",
                "a": "base",
                "b": "rag",
                "mean_diff": 0.25,
                "ci_low": -0.1,
                "ci_high": 0.5,
                "better": None,
                "n": 4,
            },
        ],  # fmt: skip
        "best": {"token_f1": {"mode": "hybrid", "significant_over": ["rag"]}},
        "diagnosis": {
            "mode": "rag",
            "questions": 4,
            "wrong": 3,
            "rule": "wrong: token F1 < 0.5 and not an exact match",
            "counts": {"retrieval": 1, "generation": 2, "both": 0},
            "weak": "generator",
            "action": "tune the generator with RAFT data",
            "commands": ["ragtune tune --recipe configs/raft-hybrid.yaml"],
        },
        "probes": {
            "forgetting": {
                "raft-hybrid-v1": {
                    "modes": ["hybrid"],
                    "before": {"probe_nll": 2.1, "probe_accuracy": 0.5, "probe_n": 40},
                    "after": {"probe_nll": 2.6, "probe_accuracy": 0.475, "probe_n": 40},
                    "compare": {
                        "probe_nll_delta": 0.5,
                        "probe_nll_relative": 0.238,
                        "probe_accuracy_delta": -0.025,
                        "forgetting": True,
                        "forgetting_reasons": ["probe NLL rose 24% (2.100 -> 2.600)"],
                    },
                }
            },
            "injection": {
                "rag": {"n": 30, "obeyed": 4, "share": ci(0.133, 0.03, 0.27, 30)},
                "hybrid": {"n": 30, "obeyed": 1, "share": ci(0.033, 0.0, 0.1, 30)},
            },
        },
        "judge": None,
    }


def fake_rows() -> list[dict]:
    rows = []
    for mode in MODES:
        for i, f1 in enumerate([0.0, 0.2, 0.9, 1.0]):
            rows.append(
                {
                    "query_id": f"q{i}",
                    "mode": mode,
                    "question": f"what does tool {i} do?",
                    "prediction": SCRIPT if (mode, i) == ("rag", 0) else f"answer {i} " * 100,
                    "gold": [f"gold {i}"] if i < 3 else None,
                    "metrics": {"token_f1": f1, "exact_match": float(f1 == 1.0)},
                    "failure": "generation" if f1 < 0.5 and mode == "rag" else None,
                }
            )
    return rows


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return report.write_reports(fake_metrics(), fake_rows(), tmp_path_factory.mktemp("run"))


def test_both_files_written(written: dict[str, Path]) -> None:
    assert set(written) == {"md", "html"}
    assert written["md"].name == "report.md" and written["html"].name == "report.html"
    assert all(p.stat().st_size > 0 for p in written.values())
    assert not [p for p in written["md"].parent.iterdir() if p.name.startswith(".")]


def test_html_is_self_contained_with_png_charts(written: dict[str, Path]) -> None:
    page = written["html"].read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, re.I)
    assert "<link" not in page and "<script" not in page.lower().replace("&lt;script", "")
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 5  # metrics, recall, latency, diagnosis, injection
    assert all(base64.b64decode(b).startswith(PNG) for b in images)


def test_predictions_are_escaped(written: dict[str, Path]) -> None:
    page = written["html"].read_text(encoding="utf-8")
    assert SCRIPT not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert SCRIPT not in written["md"].read_text(encoding="utf-8")


def test_markdown_main_table_has_a_row_per_mode_with_the_interval(
    written: dict[str, Path],
) -> None:
    md = written["md"].read_text(encoding="utf-8")
    main = md.split("## Metrics")[1].split("##")[0]
    lines = [line for line in main.splitlines() if line.startswith("| ")]
    assert [line.split("|")[1].strip() for line in lines[2:]] == MODES
    assert "| hybrid | 0.500 [0.250, 0.750] | 0.412 [0.371, 0.455] |" in main
    assert "| base | 0.000 [0.000, 0.000] | 0.100 [0.050, 0.150] | – |" in main


def test_verdict_only_where_the_interval_excludes_zero() -> None:
    md = report.render_markdown(fake_metrics(), [])
    table = md.split("## Comparisons")[1].split("##")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "−" in line]
    rows = rows[1:]  # the header names "b − a"
    assert len(rows) == 3
    better = [r for r in rows if not r.endswith("| no significant difference |")]
    assert better == ["| token F1 | hybrid − rag | 0.232 [0.035, 0.400] | 4 | hybrid better |"]
    assert table.count(" better |") == 1
    assert "Best on token F1: hybrid (0.412 [0.371, 0.455]), significantly better than rag" in md


def test_headline_without_significance() -> None:
    metrics = fake_metrics()
    metrics["best"]["token_f1"]["significant_over"] = []
    md = report.render_markdown(metrics, [])
    assert "No mode is significantly best on token F1: highest mean hybrid" in md
    assert "no significant difference from base, rag." in md
    metrics["run"]["modes"], metrics["metrics"] = ["hybrid"], {"hybrid": {}}
    metrics["performance"] = None
    assert "the only mode compared" in report.render_markdown(metrics, [])


def test_worst_answers_lowest_f1_with_gold_truncated() -> None:
    worst = worst_rows(fake_rows(), "rag")
    assert [r["query_id"] for r in worst] == ["q0", "q1", "q2"]  # q3 has no gold
    md = report.render_markdown(fake_metrics(), fake_rows())
    section = md.split("## Worst answers")[1]
    assert "results.jsonl" in section
    assert max(len(cell) for line in section.splitlines() for cell in line.split(" | ")) < 320


def test_sections_report_diagnosis_and_probes() -> None:
    md = report.render_markdown(fake_metrics(), [])
    assert "3 wrong answers out of 4 questions" in md and "token F1 < 0.5 and" in md
    assert "| generation | 2 | 67% |" in md
    assert "ragtune tune --recipe configs/raft-hybrid.yaml" in md
    assert "| raft-hybrid-v1 | hybrid | 2.100 | 2.600 | 0.500 (+23.8%) |" in md
    assert "| rag | 4/30 | 0.133 [0.030, 0.270] |" in md
    assert "| recall@3 | 0.750 [0.500, 1.000] | 4 |" in md
    assert "LLM judge" not in md


def test_judge_section_when_present() -> None:
    metrics = fake_metrics()
    metrics["judge"] = {"function": "mine:judge", "metric": "judge", "scale": "0..1"}
    metrics["metrics"]["rag"]["judge"] = ci(0.6, 0.5, 0.7)
    md = report.render_markdown(metrics, [])
    assert "## LLM judge" in md and "| rag | 0.600 [0.500, 0.700] |" in md


@pytest.mark.parametrize(
    "drop",
    [
        ("retrieval",),
        ("probes",),
        ("metrics", "comparisons", "best", "diagnosis"),  # BEIR without answers
        ("run", "performance", "judge"),
    ],
)
def test_missing_sections_still_render(drop: tuple[str, ...], tmp_path: Path) -> None:
    metrics = copy.deepcopy(fake_metrics())
    for key in drop:
        metrics[key] = None
    paths = report.write_reports(metrics, fake_rows(), tmp_path)
    page = paths["html"].read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and "&lt;script&gt;" in page


def test_empty_metrics_render_without_charts() -> None:
    assert report.charts({}) == {}
    assert "data:image/png" not in report.render_html({}, [])
    assert report.render_markdown({"run": None, "probes": {"injection": None}}, []).startswith(
        "# Evaluation run"
    )


def test_format_helpers() -> None:
    assert fmt(None) == "–" and fmt(0.41234) == "0.412" and fmt(7) == "7"
    assert fmt_ci({"mean": 0.5}) == "0.500"
    assert fmt_ci(None) == "–"
    assert verdict({"a": "x", "b": "y", "better": "x"}) == "x better"
    assert verdict({"a": "x", "b": "y", "better": None}) == "no significant difference"

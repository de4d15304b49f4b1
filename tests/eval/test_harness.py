"""The harness end to end on tiny models: every mode on the same questions, the run folder, the
statistics, the probes, and the errors a user meets first."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import pytest

from eval.config import EvalOptions
from eval.harness import EvalError, run_eval

pytestmark = pytest.mark.slow


def _options(dataset: Path, **kw: object) -> EvalOptions:
    base = {
        "dataset": dataset,
        "ft_adapter": "gamma-v1",
        "resamples": 300,
        "max_new_tokens": 6,
        "injection_n": 3,
    }
    return EvalOptions(**{**base, **kw})  # type: ignore[arg-type]


def test_run_folder_holds_every_mode_on_the_same_questions(
    squad_file: Path, eval_settings, tmp_path: Path
) -> None:
    seen: list[tuple[int, int]] = []
    out = tmp_path / "run"
    metrics = run_eval(
        _options(squad_file), out, eval_settings, progress=lambda d, t: seen.append((d, t))
    )
    assert {p.name for p in out.iterdir()} >= {
        "metrics.json",
        "results.jsonl",
        "report.md",
        "report.html",
    }
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 4 * 6 and seen[-1] == (24, 24)
    for mode in ("base", "rag", "ft", "hybrid"):
        mine = [r for r in rows if r["mode"] == mode]
        assert [r["query_id"] for r in mine] == [f"s{i}" for i in range(6)]
        assert all(
            {"question", "prediction", "gold", "citations", "metrics"} <= r.keys() for r in mine
        )
    rag = [r for r in rows if r["mode"] == "rag"]
    assert all(r["citations"] and "groundedness" in r["metrics"] for r in rag)
    assert all(
        not r["citations"] and "groundedness" not in r["metrics"]
        for r in rows
        if r["mode"] == "base"
    )
    assert set(metrics["metrics"]) == {"base", "rag", "ft", "hybrid"}
    pairs = {(c["a"], c["b"]) for c in metrics["comparisons"] if c["metric"] == "token_f1"}
    assert pairs == set(combinations(["base", "rag", "ft", "hybrid"], 2))
    assert metrics["retrieval"]["recall"]["3"]["n"] == 6
    assert metrics["run"]["adapters"] == {"ft": "gamma-v1", "hybrid": "gamma-v1"}
    assert set(metrics["probes"]["injection"]) == {"rag", "hybrid"}
    assert metrics["probes"]["forgetting"]["gamma-v1"]["modes"] == ["ft", "hybrid"]
    assert metrics["diagnosis"]["mode"] == "rag"
    wrong = [r for r in rag if r["correct"] is False]
    assert sum(metrics["diagnosis"]["counts"].values()) == len(wrong)
    assert all(r["failure"] in ("retrieval", "generation", "both") for r in wrong)
    assert json.loads((out / "metrics.json").read_text())["run"]["questions"] == 6


def test_same_seed_and_data_give_the_same_numbers(
    squad_file: Path, eval_settings, tmp_path: Path
) -> None:
    opts = _options(squad_file, modes=("base", "rag"), probes=False)
    first = run_eval(opts, tmp_path / "a", eval_settings)
    second = run_eval(opts, tmp_path / "b", eval_settings)
    other = run_eval(
        _options(squad_file, modes=("base", "rag"), probes=False, seed=1),
        tmp_path / "c",
        eval_settings,
    )

    def answers(m: dict) -> dict:
        return {
            mode: {k: v for k, v in by.items() if k != "latency_s"}
            for mode, by in m["metrics"].items()
        }

    assert answers(first) == answers(second)
    assert first["retrieval"]["recall"] == second["retrieval"]["recall"]
    f1 = [c for c in first["comparisons"] if c["metric"] == "token_f1"]
    assert f1 == [c for c in second["comparisons"] if c["metric"] == "token_f1"]
    assert answers(first)["rag"]["token_f1"]["mean"] == answers(other)["rag"]["token_f1"]["mean"]


def test_adapter_modes_need_an_adapter(squad_file: Path, eval_settings, tmp_path: Path) -> None:
    with pytest.raises(EvalError, match="--ft-adapter"):
        run_eval(_options(squad_file, ft_adapter=None), tmp_path / "x", eval_settings)
    with pytest.raises(EvalError, match="no adapter 'nope'"):
        run_eval(_options(squad_file, ft_adapter="nope"), tmp_path / "x", eval_settings)
    assert not (tmp_path / "x").exists()


def short_answers_judge(
    question: str, prediction: str, gold: list[str] | None, passages: list[str]
) -> float:
    """A stand-in for a user's LLM judge: prefers short answers, sees the passages of rag."""
    assert question and gold
    return 0.5 / (1 + len(prediction.split())) + (0.5 if passages else 0.0)


def test_the_judge_hook_scores_every_answer_and_joins_the_comparisons(
    squad_file: Path, eval_settings, tmp_path: Path
) -> None:
    opts = _options(
        squad_file,
        modes=("base", "rag"),
        probes=False,
        judge="tests.eval.test_harness:short_answers_judge",
    )
    metrics = run_eval(opts, tmp_path / "run", eval_settings)
    assert metrics["judge"]["function"] == "tests.eval.test_harness:short_answers_judge"
    assert metrics["metrics"]["rag"]["judge"]["mean"] > metrics["metrics"]["base"]["judge"]["mean"]
    (c,) = [c for c in metrics["comparisons"] if c["metric"] == "judge"]
    assert c["better"] == "rag"
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    ]
    assert all(0 <= r["metrics"]["judge"] <= 1 for r in rows)


def test_a_judge_that_cannot_be_found_is_a_clear_error(
    squad_file: Path, eval_settings, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="judge: .*no function 'missing'"):
        run_eval(
            _options(
                squad_file, modes=("base",), probes=False, judge="tests.eval.test_harness:missing"
            ),
            tmp_path / "run",
            eval_settings,
        )

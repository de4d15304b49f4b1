"""The evaluation harness: every mode answers the same questions with the same decoding, and
the run folder says which is better, by how much, and which component is weak.

``run_eval`` is the run, step by step: read the dataset (``_load``); find each mode's adapter
(``resolve_adapters``); retrieve once per question (``_retrieval``: precomputed by the service,
from the live index, or from the dataset's own index, ``eval.index_cache``), and draw the
in-context modes' demonstrations while that index is open (``eval.shots``); every mode answers
as one system (``eval.systems.generate``, with the probes); score every answer
(``eval.scoring``); bootstrap the intervals (``eval.stats``); diagnose the wrong answers, and
say whether prompting already matches fine-tuning (``eval.diagnose.prompting``); write
``metrics.json``, ``results.jsonl``, ``report.md`` and ``report.html`` (``write_run``). The run
records a dataset inside the run folder (``out``'s parent, as the service lays a run out) by its
place there, and a model configured by folder by the folder's name, so a report served over
HTTP names no server path.

Through those modules a run uses the service's pieces (retriever, prompt, engine, adapters)
directly, never HTTP. A stop request ends the run with ``tuner.hooks.Cancelled``; a run that
cannot start as asked raises ``EvalError``. Knows nothing of how answers are generated or
scored: only the order of the steps, which adapter each mode runs, and the run folder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eval import diagnose, shots, stats
from eval.config import EvalOptions, needs_adapter, retrieves
from eval.datasets.formats import DatasetError, EvalSet, load
from eval.index_cache import Retrieved, fresh_index, read_retrieved, search_all
from eval.scoring import (
    add_judge,
    diagnosis_section,
    judge_info,
    performance,
    retrieval_section,
    score_rows,
)
from eval.systems import Answer, generate
from retriever.index import Retriever
from retriever.sparse import CJK
from tuner.durable import atomic_write_text

if TYPE_CHECKING:
    from service.settings import Settings

Progress = Callable[[int, int], None]


class EvalError(ValueError):
    """The run cannot start as asked (missing adapter, empty dataset...)."""


def run_eval(
    options: EvalOptions,
    out: Path,
    settings: Settings,
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
    try:
        shots.check(options, evalset)  # fail before any index or model loads
    except shots.ShotError as exc:
        raise EvalError(str(exc)) from None
    if options.judge:  # fail before any model loads
        from eval.judge import load_judge

        load_judge(options.judge)
    stage: dict[str, Any] = {}
    retrieved, demos = _retrieval(options, evalset, settings, retriever, stage)
    questions = [q.text for q in evalset.questions]
    answers, injection, forgetting = generate(
        options,
        questions,
        retrieved,
        adapters_for,
        settings,
        stage,
        progress,
        should_stop,
        shots=demos.per_question if demos else None,
    )
    t1 = time.perf_counter()
    rows, per_mode = score_rows(options, evalset, retrieved, answers)
    over_long = mark_over_long(evalset, answers, rows)
    if options.judge:
        add_judge(options, answers, rows, per_mode)
    summary = stats.summarize(per_mode, options.resamples, options.seed)
    metrics = {
        "run": _run_info(options, evalset, settings, adapters_for, started, stage, out.parent),
        **summary,
        "performance": performance(answers, stage["generate"]),
        "retrieval": retrieval_section(options, evalset, retrieved),
        "diagnosis": diagnosis_section(options, evalset, rows),
        "prompting": diagnose.prompting(summary["metrics"], summary["comparisons"], options.modes),
        "probes": {"forgetting": forgetting, "injection": injection} if options.probes else None,
        "judge": judge_info(options.judge) if options.judge else None,
    }
    metrics["run"]["max_new_tokens_used"] = (
        max((a.max_new_tokens for got in answers.values() for a in got), default=0)
        or options.max_new_tokens
    )
    metrics["run"]["over_long"] = over_long
    metrics["run"]["shots"] = demos.info if demos else None
    if metrics["diagnosis"] and metrics["prompting"]:
        diagnose.prefer_prompting(metrics["diagnosis"], metrics["prompting"])
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


def resolve_adapters(options: EvalOptions, settings: Settings) -> dict[str, str]:
    """The adapter each of ft and hybrid runs with: named, else the promoted one."""
    from service.loading import registry_from_settings
    from tuner.registry import RecordNotFound

    needed = [m for m in options.modes if needs_adapter(m)]
    if not needed:
        return {}
    registry = registry_from_settings(settings)
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
    options: EvalOptions, evalset: EvalSet, settings: Settings, live: Retriever | None, stage: dict
) -> tuple[list[Retrieved], shots.Shots | None]:
    """One retrieval per question: precomputed, from the live index, or from the dataset's own
    index (closed again before generation starts); and the in-context modes' demonstrations,
    drawn while that index is open (None without an in-context mode)."""
    needs = any(retrieves(m) for m in options.modes) or evalset.has_qrels
    if options.retrieved is not None:
        found = read_retrieved(options.retrieved, len(evalset.questions))
        return found, _demos(options, evalset, None, settings, stage)
    if not needs and not shots.needs_index(options, evalset):
        return [Retrieved([], 0.0) for _ in evalset.questions], _demos(
            options, evalset, None, settings, stage
        )
    if evalset.corpus is None:
        if live is None:
            raise EvalError(f"{evalset.path}: no corpus to index; ask the live index (--live)")
        return _search(live, needs, evalset, options, settings, stage)
    with fresh_index(evalset, settings, options.embedder_adapter, stage) as index:
        return _search(index, needs, evalset, options, settings, stage)


def _search(
    index: Retriever,
    needs: bool,
    evalset: EvalSet,
    options: EvalOptions,
    settings: Settings,
    stage: dict,
) -> tuple[list[Retrieved], shots.Shots | None]:
    """Each question asked of ``index`` (when ``needs``), and the demonstrations it gives."""
    if needs:
        found = search_all(index, evalset.questions, options, settings, stage)
    else:
        found = [Retrieved([], 0.0) for _ in evalset.questions]
    return found, _demos(options, evalset, index, settings, stage)


def _demos(
    options: EvalOptions,
    evalset: EvalSet,
    index: Retriever | None,
    settings: Settings,
    stage: dict,
) -> shots.Shots | None:
    """The demonstrations of the in-context modes (timed into ``stage["shots"]``)."""
    if not shots.wanted(options):
        return None
    t = time.perf_counter()
    try:
        drawn = shots.draw(options, evalset, index, settings)
    except shots.ShotError as exc:
        raise EvalError(str(exc)) from None
    stage["shots"] = time.perf_counter() - t
    return drawn


def mark_over_long(
    evalset: EvalSet, answers: dict[str, list[Answer]], rows: list[dict]
) -> list[dict[str, Any]]:
    """The answers whose question was over the model's context: cut from its end to fit
    (``cut_chars``) or left unanswered (``unanswered``, the answer empty and scored as such),
    each named by mode, query id and its place among the dataset's questions (1-based); their
    rows of ``results.jsonl`` (``rows``, in ``score_rows`` order) say the same."""
    found: list[dict[str, Any]] = []
    each = [(mode, i, a) for mode, got in answers.items() for i, a in enumerate(got)]
    for row, (mode, i, answer) in zip(rows, each, strict=True):
        if not (answer.cut_chars or answer.unanswered):
            continue
        note: dict[str, Any] = {
            "mode": mode,
            "query_id": evalset.questions[i].id,
            "question": i + 1,
        }
        if answer.cut_chars:
            row["question_cut_chars"] = note["cut_chars"] = answer.cut_chars
        if answer.unanswered:
            row["unanswered"] = note["unanswered"] = answer.unanswered
        found.append(note)
    return found


# ---- the run folder -------------------------------------------------------------------------
def _run_info(
    options: EvalOptions,
    evalset: EvalSet,
    settings: Settings,
    adapters_for: dict,
    started: datetime,
    stage: dict,
    run_dir: Path,
) -> dict[str, Any]:
    cjk = sum(bool(CJK.search(q.text)) for q in evalset.questions)
    recorded = options.to_dict()
    for key in ("dataset", "retrieved"):
        if recorded[key] is not None:
            recorded[key] = shown_path(Path(recorded[key]), run_dir)
    return {
        "id": f"eval-{started:%Y%m%d-%H%M%S}",
        "dataset": shown_path(Path(evalset.path), run_dir),
        "dataset_kind": evalset.kind,
        "lang": "zh" if cjk > len(evalset.questions) / 2 else "en",
        "questions": len(evalset.questions),
        "modes": list(options.modes),
        "k": options.k,
        "depth": options.depth,
        "max_new_tokens": options.max_new_tokens,
        "seed": options.seed,
        "resamples": options.resamples,
        "generator": shown_model(str(settings.generator)),
        "embedder": options.embedder_adapter or shown_model(str(settings.embedder)),
        "adapters": adapters_for,
        "live": evalset.corpus is None,
        "concurrency": options.batch,
        "started": started.isoformat(timespec="seconds"),
        "stage_s": stage,
        "options": recorded,
    }


def shown_path(path: Path, run_dir: Path) -> str:
    """``path`` as the run records it: relative to ``run_dir`` when inside it, else as given."""
    try:
        return path.resolve().relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        return str(path)


def shown_model(name: str) -> str:
    """A model as the run records it: a hub or preset name as is, a folder by its name."""
    return Path(name).name if Path(name).is_absolute() or Path(name).is_dir() else name


def write_run(out: Path, metrics: dict[str, Any], rows: list[dict]) -> None:
    """metrics.json, results.jsonl and the reports, each written atomically."""
    from eval.report import write_reports

    out.mkdir(parents=True, exist_ok=True)
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_text(out / "results.jsonl", body)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, ensure_ascii=False))
    write_reports(metrics, rows, out)

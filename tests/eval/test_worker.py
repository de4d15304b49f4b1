"""eval.worker with a stand-in harness: what it reads from the run folder and what it records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from eval import worker
from eval.config import EvalOptions
from retriever.index import DocumentIn, Retriever
from service.evalruns import EvalSpec, prepare_run, worker_settings
from tests.eval.conftest import SQUAD
from tests.fakes import FakeEmbedder
from tuner.jobstore import Job, JobStore


class Stop(Exception):
    """Stands in for tuner.hooks.Cancelled (what the harness raises when stopped)."""


def make_run(tmp_path: Path, live: bool = True) -> tuple[Path, JobStore, str]:
    """A run folder as the service's runner and ``prepare`` leave it, its job running."""
    store = JobStore(tmp_path / "evals" / "jobs.db")
    spec = EvalSpec("file-0123", {"modes": ["base", "rag"], "k": 2, "depth": 4})
    job_id = store.create(spec)
    run_dir = tmp_path / "evals" / job_id
    run_dir.mkdir()
    options = {**spec.options, "dataset": "dataset.jsonl", "live": live}
    if live:
        options["retrieved"] = "retrieved.jsonl"
    (run_dir / "recipe.json").write_text(json.dumps({**spec.to_dict(), "options": options}))
    settings = {"data_dir": str(tmp_path / "data"), "generator": "tiny", "threads": 1}
    (run_dir / "job.json").write_text(json.dumps({"id": job_id, "settings": settings}))
    assert store.queued(job_id) and store.running(job_id, pid=1)
    return run_dir, store, job_id


def fake(behaviour: str, calls: list[dict[str, Any]], store: JobStore | None = None) -> Any:
    def run_eval(options: EvalOptions, *, out: Path, settings: Any, progress, should_stop):  # noqa: ANN001
        calls.append({"options": options, "out": out, "settings": settings})
        for done in (1, 2, 3):
            progress(done, 3)
            if behaviour == "cancel" and done == 2:
                assert store is not None
                store.cancel(out.parent.name)  # as POST .../cancel does
            if should_stop():
                raise Stop("stopped")
        if behaviour == "bad data":
            raise ValueError("dataset.jsonl:3: 'question' must be a non-empty string")
        if behaviour == "crash":
            raise RuntimeError("the generator ran out of memory")
        out.mkdir()
        (out / "metrics.json").write_text('{"primary": 0.5}')
        return {"primary": 0.5}

    return run_eval


def work(run_dir: Path, run_eval: Any) -> int:
    return worker.main([str(run_dir)], run=run_eval, cancelled=Stop)


def test_a_run_that_succeeds_records_its_progress(tmp_path: Path) -> None:
    run_dir, store, job_id = make_run(tmp_path)
    calls: list[dict[str, Any]] = []
    assert work(run_dir, fake("ok", calls)) == 0
    job: Job = store.get(job_id)
    assert (job.state, job.step, job.total, job.error) == ("succeeded", 3, 3, None)
    assert job.loss_curve == [] and (run_dir / "report" / "metrics.json").is_file()
    (call,) = calls
    options = call["options"]
    assert call["out"] == run_dir.resolve() / "report"
    assert options.dataset == run_dir.resolve() / "dataset.jsonl" and options.live
    assert options.retrieved == run_dir.resolve() / "retrieved.jsonl"
    assert (options.modes, options.k, options.depth) == (("base", "rag"), 2, 4)
    settings = call["settings"]  # the service's settings, from job.json
    assert (settings.data_dir, settings.generator, settings.threads) == (
        tmp_path / "data",
        "tiny",
        1,
    )


def test_a_fresh_index_run_has_no_retrieval_file(tmp_path: Path) -> None:
    run_dir, store, job_id = make_run(tmp_path, live=False)
    calls: list[dict[str, Any]] = []
    assert work(run_dir, fake("ok", calls)) == 0
    assert calls[0]["options"].retrieved is None and not calls[0]["options"].live


def test_bad_data_fails_the_run_with_its_message(tmp_path: Path) -> None:
    run_dir, store, job_id = make_run(tmp_path)
    assert work(run_dir, fake("bad data", [])) == 1
    job = store.get(job_id)
    assert job.state == "failed" and job.error == (
        "dataset.jsonl:3: 'question' must be a non-empty string"
    )


def test_bad_options_fail_the_run_before_it_starts(tmp_path: Path) -> None:
    run_dir, store, job_id = make_run(tmp_path)
    spec = json.loads((run_dir / "recipe.json").read_text())
    spec["options"]["depth"] = 1  # below k
    (run_dir / "recipe.json").write_text(json.dumps(spec))
    calls: list[dict[str, Any]] = []
    assert work(run_dir, fake("ok", calls)) == 1
    assert calls == [] and "depth: must be >= k" in str(store.get(job_id).error)


def test_a_crash_fails_the_run_with_its_type(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir, store, job_id = make_run(tmp_path)
    assert work(run_dir, fake("crash", [])) == 1
    job = store.get(job_id)
    assert job.state == "failed"
    assert str(job.error).startswith("RuntimeError: the generator ran out of memory")
    assert "Traceback" in capsys.readouterr().err  # the runner sends stderr to log.txt


def test_cancelling_stops_the_run_at_its_next_check(tmp_path: Path) -> None:
    run_dir, store, job_id = make_run(tmp_path)
    assert work(run_dir, fake("cancel", [], store)) == 0
    job = store.get(job_id)
    assert (job.state, job.step, job.total) == ("cancelled", 2, 3)
    assert not (run_dir / "report").exists()


def test_usage(capsys: pytest.CaptureFixture) -> None:
    assert worker.main([]) == 2
    assert "usage: python -m eval.worker RUN_DIR" in capsys.readouterr().err


def test_the_real_harness_reads_what_the_service_prepared(eval_settings, tmp_path: Path) -> None:
    """The contract between ``service.evalruns`` and ``eval``: a live run's ``retrieved.jsonl``
    and ``recipe.json`` as the service writes them, evaluated by the real harness."""
    live = Retriever(tmp_path / "index", FakeEmbedder())
    live.upsert_many([DocumentIn(c, f"d{i}", {}) for i, (c, _, _) in enumerate(SQUAD)])
    files = tmp_path / "files"
    files.mkdir()
    rows = [{"question": q, "answer": a, "doc_ids": [f"d{i}"]} for i, (_, q, a) in enumerate(SQUAD)]
    (files / "file-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = JobStore(tmp_path / "evals" / "jobs.db")
    options = {"modes": ["base", "rag"], "k": 2, "depth": 4, "resamples": 100, "probes": False}
    spec = EvalSpec("file-1", options)
    job_id = store.create(spec)
    run_dir = tmp_path / "evals" / job_id
    job = {"id": job_id, "settings": worker_settings(eval_settings)}
    run_dir.mkdir()
    (run_dir / "job.json").write_text(json.dumps(job))
    try:
        assert prepare_run(spec, run_dir, files_dir=files, retriever=live) == {
            "rows": 6,
            "live": True,
        }
    finally:
        live.close()  # the worker never opens it
    assert store.queued(job_id) and store.running(job_id, pid=1)
    assert worker.main([str(run_dir)]) == 0, store.get(job_id).error
    done = store.get(job_id)
    assert done.state == "succeeded" and done.step == done.total
    metrics = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert metrics["retrieval"]["n"] == 6 and metrics["retrieval"]["recall"]["1"]["mean"] == 1.0
    assert (run_dir / "report" / "report.html").is_file()

"""Sweeps through the jobs API: every trial a tuning job of the app's runner, the sweep followed,
cancelled and reported at /v1/tune/sweeps; a trial the pruner stops is a cancelled job with no
checkpoints left; a sweep the service stopped resumes at the next start with the same job."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.settings import Settings
from service.sweeps import SweepRunner
from tests.helpers import app_clients, poll_state
from tests.tuner.fake_trainer import make_runner
from tuner.config import recipe_from_dict
from tuner.registry import Registry

ROWS = b"".join(
    json.dumps(
        {
            "messages": [
                {"role": "user", "content": f"what is item {i} ?"},
                {"role": "assistant", "content": f"item {i} is number {i} ."},
            ]
        }
    ).encode()
    + b"\n"
    for i in range(16)
)
SPACE = {
    "hyperparameters.learning_rate": {"type": "log_uniform", "low": 1e-5, "high": 5e-2},
    "hyperparameters.rank": {"type": "categorical", "choices": [4, 8]},
}


@pytest.fixture
def client(tiny_llama: Path, tmp_path: Path):
    with app_clients(tiny_llama, tmp_path) as make:
        yield make(Settings(generator=str(tiny_llama), threads=1))  # type: ignore[arg-type]


def _file(client: TestClient) -> str:
    files = {"file": ("train.jsonl", ROWS, "application/jsonl")}
    return str(client.post("/v1/files", files=files).json()["id"])


def _body(file_id: str, **sweep: Any) -> dict[str, Any]:
    hp = {"max_steps": 6, "eval_every": 2, "checkpoint_every": 2, "val_fraction": 0.25}
    return {
        "method": "lora",
        "name": "api-sweep",
        "dataset": file_id,
        "hyperparameters": {"learning_rate": 3e-2, **hp},
        "sweep": {"trials": 2, "space": SPACE, **sweep},
    }


@pytest.mark.slow
def test_a_sweep_through_the_api_trains_each_trial_as_a_job(client: TestClient) -> None:
    file_id = _file(client)
    r = client.post("/v1/tune/jobs", json=_body(file_id))
    assert r.status_code == 202, r.text
    sweep_id = r.json()["sweep"]
    done = poll_state(client, f"/v1/tune/sweeps/{sweep_id}", "succeeded", 300)
    assert [t["state"] for t in done["trials"]] == ["complete", "complete"]
    assert done["baseline"]["number"] == 0 and done["baseline"]["params"] == {
        "hyperparameters.learning_rate": 3e-2,
        "hyperparameters.rank": 8,
    }
    jobs = {j["id"]: j for j in client.get("/v1/tune/jobs").json()["jobs"]}
    registry = client.app.state.ragtune.registry()  # type: ignore[attr-defined]
    for trial in done["trials"]:
        job = jobs[trial["job"]]  # each trial is a job, with its own progress
        assert job["state"] == "succeeded" and job["progress"] == {"step": 6, "total": 6}
        assert job["adapter"] == trial["adapter"]
        record = registry.get(trial["adapter"])
        assert record.sweep == {
            "id": sweep_id,
            "run": record.sweep["run"],
            "trial": trial["number"],
            "params": trial["params"],
            "baseline": trial["number"] == 0,
        }
        assert record.metrics["val_loss"] == pytest.approx(trial["value"])
        assert record.hyperparameters["rank"] == trial["params"]["hyperparameters.rank"]
        assert not record.promoted
    assert done["best"]["adapter"] in {t["adapter"] for t in done["trials"]}
    listed = client.get("/v1/tune/sweeps").json()["sweeps"]
    assert [s["id"] for s in listed] == [sweep_id]
    report = client.get(f"/v1/tune/sweeps/{sweep_id}/report")
    assert report.status_code == 200 and "Best trial" in report.text
    assert "default-src 'none'" in report.headers["content-security-policy"]
    md = client.get(f"/v1/tune/sweeps/{sweep_id}/report?format=md")
    assert md.status_code == 200 and "| 0 (baseline) | complete |" in md.text


@pytest.mark.slow
def test_cancelling_a_sweep_stops_its_trial_job(client: TestClient) -> None:
    body = _body(_file(client), trials=4)
    body["hyperparameters"]["max_steps"] = 5000
    sweep_id = client.post("/v1/tune/jobs", json=body).json()["sweep"]
    deadline = time.monotonic() + 120
    while not (current := client.get(f"/v1/tune/sweeps/{sweep_id}").json()["current_job"]):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    poll_state(client, f"/v1/tune/jobs/{current}", "running", 60)
    r = client.post(f"/v1/tune/sweeps/{sweep_id}/cancel")
    assert r.status_code == 202 and r.json()["cancel_requested"]
    ended = poll_state(client, f"/v1/tune/sweeps/{sweep_id}", "cancelled", 60)
    assert [t["state"] for t in ended["trials"]] == ["fail"]
    assert client.get(f"/v1/tune/jobs/{current}").json()["state"] == "cancelled"
    assert client.post(f"/v1/tune/sweeps/{sweep_id}/cancel").status_code == 409
    assert client.app.state.ragtune.registry().list() == []  # type: ignore[attr-defined]


def test_bad_sweeps_are_422_naming_the_key_and_unknown_ids_404(client: TestClient) -> None:
    file_id = _file(client)
    for change, code, words in (
        (
            {"space": {"hyperparameters.nope": {"type": "uniform", "low": 0, "high": 1}}},
            "invalid_recipe",
            "sweep.space.hyperparameters.nope: not a key",
        ),
        (
            {"space": {"hyperparameters.rank": {"type": "gauss", "low": 1, "high": 2}}},
            "invalid_request",
            "type",
        ),
        ({"trials": 0}, "invalid_request", "trials"),
        ({"objective": "recall@10"}, "invalid_recipe", "sweep.objective"),
        ({"space": {}}, "invalid_request", "space"),
        ({"bogus": 1}, "invalid_request", "bogus"),
        ({"objective": "eval", "eval": {"dataset": "/etc/passwd"}}, "invalid_request", "dataset"),
        (
            {"objective": "eval", "eval": {"dataset": "file-0123456789abcdef0123456789abcdef"}},
            "invalid_recipe",
            "sweep.eval.dataset: no uploaded file",
        ),
        (
            {"objective": "eval", "eval": {"dataset": file_id, "max_new_tokens": 4000}},
            "invalid_recipe",
            "sweep.eval.max_new_tokens: at most",
        ),
        ({"objective": "eval"}, "invalid_recipe", "sweep.eval: set for objective eval"),
    ):
        r = client.post(
            "/v1/tune/jobs", json={**_body(file_id), "sweep": {"space": SPACE, **change}}
        )
        assert r.status_code == 422, (change, r.text)
        assert r.json()["error"]["code"] == code, r.json()
        assert words in json.dumps(r.json()["error"]), r.json()  # the message, or its details' loc
    assert client.get("/v1/tune/sweeps/sweep-nope-1").status_code == 404
    assert client.get("/v1/tune/sweeps/..%2F..%2Fetc").status_code == 404
    assert client.post("/v1/tune/sweeps/sweep-nope-1/cancel").status_code == 404
    assert client.get("/v1/tune/sweeps").json()["sweeps"] == []


@pytest.mark.slow
def test_a_sweep_scored_by_eval_runs_through_the_eval_runner(client: TestClient) -> None:
    rows = [
        {
            "id": f"d{i}",
            "context": f"item {i} is number {i} .",
            "question": f"what is item {i} ?",
            "answers": [f"number {i}"],
        }
        for i in range(3)
    ]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    dev = client.post("/v1/files", files={"file": ("dev.jsonl", data, "application/jsonl")})
    assert dev.status_code == 201, dev.text
    evaluation = {"dataset": dev.json()["id"], "limit": 2, "max_new_tokens": 8}
    body = _body(_file(client), objective="eval", eval=evaluation)
    r = client.post("/v1/tune/jobs", json=body)
    assert r.status_code == 202, r.text
    done = poll_state(client, f"/v1/tune/sweeps/{r.json()['sweep']}", "succeeded", 400)
    assert [t["state"] for t in done["trials"]] == ["complete", "complete"], done["trials"]
    runs = client.get("/v1/eval/runs").json()["runs"]
    assert len(runs) == 2 and all(run["state"] == "succeeded" for run in runs)
    for run, trial in zip(reversed(runs), done["trials"], strict=True):
        metrics = client.get(f"/v1/eval/runs/{run['id']}").json()["metrics"]
        assert metrics["run"]["adapters"]["hybrid"] == trial["adapter"]
        assert trial["value"] == pytest.approx(metrics["metrics"]["hybrid"]["token_f1"]["mean"])
    assert done["direction"] == "maximize"


def test_an_int_range_in_a_body_samples_ints() -> None:
    """JSON's 4 arrives as 4.0 in a float field: the sweep still samples whole ranks."""
    from service.routes.tune import SweepBody

    body = SweepBody(space={"hyperparameters.rank": {"type": "int", "low": 4, "high": 16}})
    data = {
        "name": "n",
        "base_model": "tiny",
        "datasets": [{"path": "x.jsonl"}],
        "sweep": body.model_dump(exclude_unset=True),
    }
    recipe = recipe_from_dict(data)
    assert recipe.sweep is not None
    assert recipe.sweep.space["hyperparameters.rank"].low == 4
    assert isinstance(recipe.sweep.space["hyperparameters.rank"].high, int)


# ---- the driver over the job runner (the fake trainer as the worker) ------------------------
def _fake_recipe(name: str = "fake-sweep", steps: int = 6, trials: int = 2) -> dict[str, Any]:
    return {
        "name": name,
        "base_model": "tiny",
        "datasets": [{"path": "unused.jsonl"}],
        "hyperparameters": {
            "max_steps": steps,
            "eval_every": 2,
            "checkpoint_every": 2,
            "learning_rate": 1e-3,
        },
        "probe": False,
        "sweep": {
            "trials": trials,
            "pruner": "none",
            "space": {
                "hyperparameters.learning_rate": {"type": "log_uniform", "low": 1e-4, "high": 1e-2}
            },
        },
    }


def _record(adapter: str) -> Any:
    return SimpleNamespace(id=adapter, metrics={"val_loss": 0.5})


def _runners(data: Path, step_s: float, database: Any = None) -> tuple[Any, SweepRunner]:
    jobs = make_runner(data, step_s=step_s, database=database).start()
    sweeps = SweepRunner(
        data / "sweeps", jobs, Registry(data / "adapters"), 0.05, _record, database=database
    )
    return jobs, sweeps.start()


def _wait(check: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return got


def test_a_pruned_trial_is_a_cancelled_job_without_checkpoints(tmp_path: Path) -> None:
    jobs, sweeps = _runners(tmp_path / "data", step_s=0.05)
    try:
        run_trial = sweeps._trial_runner(sweeps._sweep(sweeps.submit(_fake_recipe(trials=1))))
        _wait(lambda: sweeps.list()[0]["state"] == "succeeded")

        class Prune:
            seen: list[float] = []

            def progress(self, step: int, total: int, loss: float, val: float | None) -> None:
                self.seen.append(val)

            def should_stop(self) -> bool:
                return len(self.seen) >= 1  # lags at its first validation

        started: list[str] = []
        info = SimpleNamespace(sweep={"id": "s", "trial": 9}, resume=None, started=started.append)
        recipe = recipe_from_dict({**_fake_recipe(steps=400), "sweep": None})
        from tuner.hooks import Cancelled

        with pytest.raises(Cancelled):
            run_trial(recipe, info, Prune())
        job = jobs.get(started[0])
        assert job.state == "cancelled" and job.step < 400 and job.adapter is None
        assert not (jobs.job_dir(job.id) / "checkpoints").exists()
        assert json.loads((jobs.job_dir(job.id) / "sweep.json").read_text())["trial"] == 9
    finally:
        sweeps.close()
        jobs.close()


def test_a_sweep_left_running_at_shutdown_resumes_with_the_same_job(tmp_path: Path) -> None:
    data = tmp_path / "data"
    jobs, sweeps = _runners(data, step_s=0.05)
    sweep_id = sweeps.submit(_fake_recipe(steps=60))

    def second_trial_checkpointed() -> str | None:
        trials = sweeps.get(sweep_id)["trials"]
        key = trials[1]["key"] if len(trials) > 1 else None
        return key if key and (jobs.job_dir(key) / "checkpoints" / "step.json").is_file() else None

    job_id = _wait(second_trial_checkpointed)
    sweeps.close()
    jobs.close()  # the service stops: the trial's job is queued again, the sweep left running
    assert sweeps.get(sweep_id)["state"] == "running"
    steps_before = (jobs.job_dir(job_id) / "steps.txt").read_text().split()

    jobs, sweeps = _runners(data, step_s=0.01)
    try:
        done = _wait(lambda: (s := sweeps.get(sweep_id))["state"] == "succeeded" and s)
    finally:
        sweeps.close()
        jobs.close()
    assert [t["state"] for t in done["trials"]] == ["complete", "complete"]
    assert done["trials"][1]["key"] == job_id  # the same job, not a new one
    assert jobs.get(job_id).attempts == 2
    steps = (jobs.job_dir(job_id) / "steps.txt").read_text().split()
    resumed_at = int(steps[len(steps_before)])
    assert resumed_at > 1  # it went on from its checkpoint
    assert len(jobs.list()) == 2


def test_replicas_over_one_database_drive_a_sweep_once_and_take_it_over(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Two replicas over one data dir and database: the one driving a sweep holds its lock (the
    other cannot take it), a driver whose lock's session is cut lets the sweep go, and when the
    driving replica stops the other takes the sweep over and finishes it with the same job."""
    import logging

    import psycopg

    import service.sweeps
    from tests.backends import new_schema
    from tuner.pg import Database

    monkeypatch.setattr(service.sweeps, "RESCAN_S", 0.1)
    database = Database(pg_url, new_schema())
    data = tmp_path / "data"
    jobs_a, sweeps_a = _runners(data, 0.05, database)
    jobs_b, sweeps_b = _runners(data, 0.05, database)
    try:
        sweep_id = sweeps_a.submit(_fake_recipe(steps=60))
        first = _wait(lambda: (t := sweeps_b.get(sweep_id)["trials"]) and t[0]["key"])
        _wait(lambda: jobs_b.get(first).step >= 5)
        with sweeps_b._driving(sweep_id) as mine:
            assert not mine  # a holds it
        assert len(sweeps_b.get(sweep_id)["trials"]) == 1
        with caplog.at_level(logging.WARNING, logger="service.sweeps"):
            with psycopg.connect(pg_url, autocommit=True) as conn:  # cut a's lock's session
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks"
                    " WHERE locktype = 'advisory' AND classid = %s",
                    (service.sweeps.LOCK_SWEEP,),
                )
            _wait(lambda: "lost its lock's session" in caplog.text, 10)
        sweeps_a.close()
        jobs_a.close()  # replica a stops: b takes over the sweep and its trial's job
        done = _wait(lambda: (s := sweeps_b.get(sweep_id))["state"] == "succeeded" and s, 120)
        listed = sorted(j.id for j in jobs_b.list())
    finally:
        for runner in (sweeps_a, jobs_a, sweeps_b, jobs_b):
            runner.close()
    assert [t["state"] for t in done["trials"]] == ["complete", "complete"]
    assert done["trials"][0]["key"] == first  # the same job, resumed
    assert listed == sorted(t["key"] for t in done["trials"])  # one job per trial, none twice

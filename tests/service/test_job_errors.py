"""A failed tuning job or eval run tells its reader one line: no traceback, no server path (the
traceback goes to the worker's log), and records written before that rule are served so too."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from eval import worker as eval_worker
from service.evalruns import EvalSpec
from service.settings import Settings
from tests.helpers import app_clients
from tests.tuner.fake_trainer import make_runner
from tuner import worker as tune_worker
from tuner.config import recipe_from_dict
from tuner.jobstore import JobStore, client_error

TRACEBACK = """Traceback (most recent call last):
  File "/srv/ragtune/.venv/lib/python3.11/site-packages/tuner/train.py", line 40, in train
    raise FileNotFoundError(path)
FileNotFoundError: [Errno 2] No such file: '{data}/jobs/job-1/data/train.jsonl'
--- log.txt ---
  File "/srv/ragtune/tuner/generator_train.py", line 12
"""


def test_one_line_keeps_the_error_and_drops_the_traceback_and_paths(tmp_path: Path) -> None:
    data = tmp_path / "data"
    line = client_error(TRACEBACK.format(data=data), data)
    assert line == "FileNotFoundError: [Errno 2] No such file: 'jobs/job-1/data/train.jsonl'"
    other = client_error("OSError: cannot read /etc/ragtune/secret.json: denied\nmore", data)
    assert other == "OSError: cannot read secret.json: denied"
    assert client_error("worker exited with code -9\n--- log.txt ---\nTraceback ...", data) == (
        "worker exited with code -9"
    )
    assert client_error(None, data) is None and client_error("x" * 5000, data) == "x" * 500


def _plant_failed(store: JobStore, job_id: str, error: str) -> None:
    db = sqlite3.connect(store.path)
    with db:
        db.execute("UPDATE jobs SET state='failed', error=? WHERE id=?", (error, job_id))
    db.close()


def _recipe() -> Any:
    return recipe_from_dict({"name": "t", "datasets": [{"file_id": "f1"}]})


def test_the_store_writes_one_line_and_serves_old_tracebacks_as_one(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = JobStore(data / "jobs" / "jobs.db")
    fresh, old = store.create(_recipe()), store.create(_recipe())
    store.finish(fresh, "failed", error=TRACEBACK.format(data=data))
    _plant_failed(store, old, TRACEBACK.format(data=data))
    raw = sqlite3.connect(store.path).execute("SELECT error FROM jobs WHERE id=?", (fresh,))
    assert "\n" not in raw.fetchone()[0]  # stored as one line
    for job in (store.get(fresh), store.get(old), *store.list()):
        assert job.error is not None and "\n" not in job.error and str(data) not in job.error
        assert job.error.startswith("FileNotFoundError:") and "Traceback" not in job.error


def test_a_crashing_training_worker_records_one_line_and_logs_the_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    store = JobStore(data / "jobs" / "jobs.db")
    job_id = store.create(_recipe())
    job_dir = data / "jobs" / job_id
    job_dir.mkdir(parents=True)
    (job_dir / "recipe.json").write_text(json.dumps(_recipe().to_dict()))
    (job_dir / "job.json").write_text(json.dumps({"id": job_id}))

    def train(*_: Any, **__: Any) -> None:
        raise FileNotFoundError(f"no data at {job_dir / 'data' / 'train.jsonl'}\nsecond line")

    assert tune_worker.run(job_dir, train) == 1
    error = store.get(job_id).error
    assert error == f"FileNotFoundError: no data at jobs/{job_id}/data/train.jsonl"
    assert "Traceback" in capsys.readouterr().err  # the runner sends stderr to log.txt


def test_a_crashing_eval_worker_records_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = JobStore(data / "evals" / "jobs.db")
    job_id = store.create(EvalSpec("file-0123", {"modes": ["base"]}))
    run_dir = data / "evals" / job_id
    run_dir.mkdir(parents=True)
    options = {"modes": ["base"], "dataset": "dataset.jsonl"}
    (run_dir / "recipe.json").write_text(json.dumps({"name": "e", "options": options}))
    (run_dir / "job.json").write_text(json.dumps({"id": job_id, "settings": {}}))

    def run_eval(*_: Any, **__: Any) -> dict[str, Any]:
        raise ValueError(f"{run_dir / 'dataset.jsonl'}:3: bad row\n{run_dir}/dataset.jsonl:4: bad")

    assert eval_worker.main([str(run_dir)], run=run_eval, cancelled=KeyboardInterrupt) == 1
    assert store.get(job_id).error == f"evals/{job_id}/dataset.jsonl:3: bad row"


def test_the_jobs_api_serves_an_old_traceback_as_one_line(tiny_llama: Path, tmp_path: Path) -> None:
    with app_clients(tiny_llama, tmp_path) as make:

        def setup(state: Any) -> None:
            state.jobs = make_runner(state.settings.data_dir, step_s=0.1)

        client = make(Settings(generator=str(tiny_llama)), setup)
        data = Path(client.app.state.ragtune.settings.data_dir)
        store = JobStore(data / "jobs" / "jobs.db")
        job_id = store.create(_recipe())
        _plant_failed(store, job_id, TRACEBACK.format(data=data))
        for job in (
            client.get(f"/v1/tune/jobs/{job_id}").json(),
            *client.get("/v1/tune/jobs").json()["jobs"],
        ):
            assert (
                job["error"]
                == "FileNotFoundError: [Errno 2] No such file: 'jobs/job-1/data/train.jsonl'"
            )


def test_one_line_hides_internal_names_but_keeps_text_that_only_looks_like_a_path(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    missing = client_error("RecordNotFound: adapter 'nope' not found", data)
    assert missing == "adapter 'nope' not found"
    assert client_error("peft.tuners.NoMatchingPeftModuleError: no q_proj", data) == "no q_proj"
    assert client_error("ValueError: upload it first (POST /v1/files), 1/2 done", data) == (
        "ValueError: upload it first (POST /v1/files), 1/2 done"
    )
    spaced = client_error(f"OSError: cannot read {Path.cwd()}/my data/x.py", data)
    assert spaced == "OSError: cannot read …/my data/x.py"


def test_hiding_paths_touches_only_whole_paths_and_keeps_messages_whole() -> None:
    data = Path("/data")  # the Docker image's data dir
    inside = client_error("ValueError: bad /data/jobs/x.jsonl", data)
    assert inside == "ValueError: bad jobs/x.jsonl"
    beside = client_error("ValueError: asks about /database", data)
    assert beside == "ValueError: asks about /database"
    assert (
        client_error("OSError: see https://hf.co/data/x", data)
        == "OSError: see https://hf.co/data/x"
    )
    assert client_error("CUDA: out of memory", data) == "CUDA: out of memory"
    assert client_error("Error: the base model is gone", data) == "Error: the base model is gone"
    assert client_error("AdapterNotFound: ", data) == "the job failed"


def test_a_relative_data_dir_is_made_absolute_so_no_word_is_taken_for_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from service.evalruns import served, server_paths
    from service.settings import Settings

    monkeypatch.chdir(tmp_path)
    settings = Settings(data_dir=Path("data"))
    assert settings.data_dir == tmp_path / "data"
    run = settings.data_dir / "evals" / "run-1"
    record = {"dataset": f"{run}/dataset.jsonl", "dataset_kind": "squad", "metadata_keys": 1}
    assert served(record, server_paths(run, settings)) == {
        "dataset": "dataset.jsonl",
        "dataset_kind": "squad",
        "metadata_keys": 1,
    }
    assert client_error("ValueError: metadata/tags is not valid", settings.data_dir) == (
        "ValueError: metadata/tags is not valid"
    )

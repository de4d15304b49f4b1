"""Job store and runner with a fake trainer: lifecycle, progress, cancel, crash and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.tuner import fake_trainer
from tests.tuner.fake_trainer import make_runner
from tuner.jobs import JobRunner
from tuner.jobstore import Job, JobFinished, JobNotFound, JobStore

ROOT = Path(__file__).resolve().parents[2]


def recipe(name: str, steps: int = 6, **hp: int) -> dict:
    hyper = {"max_steps": steps, "checkpoint_every": 2, "eval_every": 3, **hp}
    return {"name": name, "datasets": [{"file_id": "f1"}], "hyperparameters": hyper}


def wait_for(
    get: Callable[[], Job], ok: Callable[[Job], bool], timeout: float = 8.0
) -> tuple[Job, list[Job]]:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get()
        seen.append(job)
        if ok(job):
            return job, seen
        time.sleep(0.02)
    raise AssertionError(f"timed out; last seen {seen[-1]}")


def steps_run(runner: JobRunner, job_id: str) -> list[int]:
    return [int(x) for x in (runner.job_dir(job_id) / "steps.txt").read_text().split()]


def test_lifecycle_progress_and_queue(tmp_path: Path) -> None:
    gate = threading.Event()

    def gated(r, job_dir):  # noqa: ANN001
        assert gate.wait(5)
        return fake_trainer.prepare(r, job_dir)

    with make_runner(tmp_path, step_s=0.1, prepare=gated) as runner:
        first = runner.submit(recipe("first"))
        second = runner.submit(recipe("second", steps=2))
        assert runner.get(first).state == "validating"
        gate.set()
        running, _ = wait_for(lambda: runner.get(first), lambda j: j.state == "running")
        wait_for(lambda: runner.get(second), lambda j: j.state == "queued")
        assert running.pid and running.started
        done, seen = wait_for(lambda: runner.get(first), lambda j: j.state == "succeeded")
        assert any(j.eta_s is not None and j.eta_s > 0 for j in seen)  # from the step rate
        assert (done.step, done.total, done.adapter, done.eta_s) == (6, 6, "first-v1", None)
        assert done.loss_curve == [[s, 2.0 / s] for s in range(1, 7)]
        assert done.val_losses == [[3, 1 / 3], [6, 1 / 6]]
        assert done.finished and done.finished >= (done.started or 0) and done.error is None
        after, _ = wait_for(lambda: runner.get(second), lambda j: j.state == "succeeded")
        assert after.started and after.started >= done.finished  # one job at a time
        assert [j.id for j in runner.list()] == [second, first]
        job_dir = runner.job_dir(first)
        assert json.loads((job_dir / "recipe.json").read_text())["name"] == "first"
        assert "succeeded: adapter first-v1" in (job_dir / "log.txt").read_text()


def test_cancel_takes_effect_within_seconds(tmp_path: Path) -> None:
    with make_runner(tmp_path, step_s=0.1) as runner:
        job_id = runner.submit(recipe("long", steps=200))
        queued = runner.submit(recipe("waiting"))
        wait_for(lambda: runner.get(job_id), lambda j: j.step >= 2)
        asked = time.monotonic()
        assert runner.cancel(job_id).cancel_requested
        assert runner.cancel(queued).state == "cancelled"  # never started: at once
        job, _ = wait_for(lambda: runner.get(job_id), lambda j: j.state == "cancelled", 3)
        assert time.monotonic() - asked < 3 and job.step < 200 and job.adapter is None
        with pytest.raises(JobFinished):
            runner.cancel(job_id)
        with pytest.raises(JobNotFound):
            runner.cancel("job-nope")
        assert not (runner.job_dir(queued) / "log.txt").exists()


def test_a_worker_that_ignores_cancel_is_terminated(tmp_path: Path) -> None:
    with make_runner(tmp_path, step_s=0.1, stop_grace_s=1.0) as runner:
        job_id = runner.submit(recipe("stubborn", steps=200))
        wait_for(lambda: runner.get(job_id), lambda j: j.step >= 1)
        runner.cancel(job_id)
        job, _ = wait_for(lambda: runner.get(job_id), lambda j: j.state == "cancelled", 5)
        pid = job.pid
        assert pid is not None
        time.sleep(0.2)
        assert (
            not Path(f"/proc/{pid}/cmdline").exists()
            or not Path(f"/proc/{pid}/cmdline").read_bytes()
        )


SERVICE = """
import sys, time
from pathlib import Path
from tests.tuner.fake_trainer import make_runner
runner = make_runner(Path(sys.argv[1]), step_s=0.15).start()
print(runner.submit({recipe!r}), flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("orphan", [False, True], ids=["worker-killed", "worker-orphaned"])
def test_crash_then_a_new_runner_resumes_from_the_checkpoint(tmp_path: Path, orphan: bool) -> None:
    """The service process dies (kill -9) mid-job; its worker dies too, or lives on orphaned."""
    script = SERVICE.format(recipe=recipe("resumed", steps=12, checkpoint_every=3))
    service = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert service.stdout is not None
    job_id = service.stdout.readline().strip()
    store = JobStore(tmp_path / "jobs" / "jobs.db")
    job, _ = wait_for(lambda: store.get(job_id), lambda j: j.step >= 4)
    service.kill()
    service.wait()
    if not orphan:
        assert job.pid is not None
        os.kill(job.pid, signal.SIGKILL)
    assert store.get(job_id).state == "running"
    with make_runner(tmp_path, step_s=0.05) as runner:
        done, _ = wait_for(lambda: runner.get(job_id), lambda j: j.state == "succeeded")
        ran = steps_run(runner, job_id)
    restart = next(i for i in range(1, len(ran)) if ran[i] != ran[i - 1] + 1)
    first, second = ran[:restart], ran[restart:]
    saved = second[0] - 1  # the checkpoint the second run resumed from
    assert first == list(range(1, len(first) + 1)) and second == list(range(saved + 1, 13))
    assert saved in (3, 6, 9) and saved <= len(first)  # nothing before the checkpoint redone
    assert done.attempts == 2 and done.adapter == "resumed-v1"
    assert [s for s, _ in done.loss_curve] == list(range(1, 13))


def test_bad_recipes_are_refused_before_anything_is_stored(tmp_path: Path) -> None:
    with make_runner(tmp_path) as runner:
        for bad in (
            {**recipe("x"), "method": "magic"},
            {**recipe("x"), "bogus": 1},
            {**recipe("x"), "hyperparameters": {"learning_rate": -1}},
            {**recipe("../etc")},
            {"name": "x", "datasets": []},
        ):
            with pytest.raises(ValueError):
                runner.submit(bad)
        assert runner.list() == []


def test_bad_data_and_a_failing_worker_fail_the_job_with_their_errors(tmp_path: Path) -> None:
    with make_runner(tmp_path) as runner:
        bad = runner.submit(recipe("baddata"))
        failing = runner.submit(recipe("fail"))
        job, _ = wait_for(lambda: runner.get(bad), lambda j: j.state == "failed")
        assert job.problems == [[3, "empty answer"], [7, "not JSON"]] and "line 3" in str(job.error)
        assert job.started is None and not (runner.job_dir(bad) / "log.txt").exists()
        job, _ = wait_for(lambda: runner.get(failing), lambda j: j.state == "failed")
        assert str(job.error).startswith("RuntimeError: the fake trainer failed at step 2")
        assert "Traceback" not in str(job.error) and "\n" not in str(job.error)  # one line
        assert "Traceback" in (runner.job_dir(failing) / "log.txt").read_text()  # kept in the log
        assert job.adapter is None and job.step == 1


def test_a_killed_worker_fails_its_job_and_the_next_one_runs(tmp_path: Path) -> None:
    with make_runner(tmp_path, step_s=0.1) as runner:
        killed = runner.submit(recipe("killed", steps=200))
        after = runner.submit(recipe("after", steps=2))
        job, _ = wait_for(lambda: runner.get(killed), lambda j: j.step >= 1)
        assert job.pid is not None
        os.kill(job.pid, signal.SIGKILL)
        job, _ = wait_for(lambda: runner.get(killed), lambda j: j.state == "failed")
        assert str(job.error).startswith("worker exited with code -9")
        assert wait_for(lambda: runner.get(after), lambda j: j.state == "succeeded")[0]


def test_one_runner_per_data_dir_runs_workers_and_another_takes_over(tmp_path: Path) -> None:
    first = make_runner(tmp_path).start()
    deadline = time.monotonic() + 2
    while not first.active and time.monotonic() < deadline:
        time.sleep(0.02)
    with make_runner(tmp_path) as second:
        job_id = second.submit(recipe("second", steps=2))
        job, _ = wait_for(lambda: second.get(job_id), lambda j: j.state == "succeeded")
        assert first.active and not second.active  # the first one ran it
        first.close()
        later = second.submit(recipe("later", steps=2))
        assert wait_for(lambda: second.get(later), lambda j: j.state == "succeeded")[0]
        assert second.active


class Spec:
    """Not a recipe: the runner only needs ``name``, ``method`` and ``to_dict()``."""

    def __init__(self, raw: dict) -> None:
        if raw.get("size", 0) < 1:
            raise ValueError(f"size: must be >= 1, got {raw.get('size')}")
        self.name, self.method, self.raw = "count", f"to-{raw['size']}", raw

    def to_dict(self) -> dict:
        return dict(self.raw)


COUNTER = """
import json, sys
from pathlib import Path
from tuner.jobstore import JobStore
job_dir = Path(sys.argv[1])
store = JobStore(job_dir.parent / "jobs.db")
job_id = json.loads((job_dir / "job.json").read_text())["id"]
size = json.loads((job_dir / "recipe.json").read_text())["size"]
for done in range(1, size + 1):
    store.progress(job_id, done, size, None, None)
store.finish(job_id, "succeeded")
"""


def test_other_kinds_of_jobs_live_in_their_own_folder_with_their_own_spec(tmp_path: Path) -> None:
    prepared = []
    counter = JobRunner(
        tmp_path,
        lambda spec, job_dir: prepared.append((spec.raw, job_dir)),
        folder="counts",
        parse=Spec,
        command=[sys.executable, "-c", COUNTER],
        env={"PYTHONPATH": str(ROOT)},
        poll_s=0.05,
    )
    with make_runner(tmp_path) as tuning, counter:
        with pytest.raises(ValueError, match="size"):
            counter.submit({"size": 0})
        count_id = counter.submit({"size": 3})
        tune_id = tuning.submit(recipe("beside", steps=2))
        job, _ = wait_for(lambda: counter.get(count_id), lambda j: j.state == "succeeded")
        assert (job.name, job.method, job.recipe) == ("count", "to-3", {"size": 3})
        assert (job.step, job.total, job.loss_curve, job.val_losses) == (3, 3, [], [])
        assert prepared == [({"size": 3}, tmp_path / "counts" / count_id)]
        assert (tmp_path / "counts" / "jobs.db").is_file() and counter.active
        assert wait_for(lambda: tuning.get(tune_id), lambda j: j.state == "succeeded")[0]
        assert tuning.active  # each folder has its own lock and its own worker
        assert [j.id for j in counter.list()] == [count_id]
        assert [j.id for j in tuning.list()] == [tune_id]


def test_a_stored_spec_that_no_longer_parses_fails_its_job_on_recovery(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "counts" / "jobs.db")
    stale = store.create(Spec({"size": 2}))  # left validating by a crash
    with store._db() as db:
        db.execute("UPDATE jobs SET recipe = ? WHERE id = ?", ('{"size": 0}', stale))
    with JobRunner(tmp_path, lambda s, d: None, folder="counts", parse=Spec, poll_s=0.05) as r:
        job, _ = wait_for(lambda: r.get(stale), lambda j: j.state == "failed")
        assert "size: must be >= 1" in str(job.error)


def test_a_job_submitted_as_the_runner_takes_its_lock_is_validated_once(
    tmp_path: Path,
) -> None:
    """The runner's first act takes up jobs left "validating"; one it was handed itself, in
    that moment, is its own and must not be prepared twice (or have its folder raced)."""
    prepared: list[str] = []

    def prepare(recipe: object, job_dir: Path) -> None:
        prepared.append(job_dir.name)
        fake_trainer.prepare(recipe, job_dir)

    runner = make_runner(tmp_path, prepare=prepare)
    create = runner.store.create

    def create_then_race(spec: object) -> str:  # the supervisor takes the lock right now
        job_id = create(spec)
        taking = threading.Thread(target=runner._take_lock)
        taking.start()
        taking.join(0.5)
        return job_id

    runner.store.create = create_then_race
    job_id = runner.submit(recipe("early"))
    runner.store.create = create
    with runner.start():
        job, _ = wait_for(lambda: runner.get(job_id), lambda j: j.state == "succeeded")
        assert job.state == "succeeded"
    assert prepared == [job_id]

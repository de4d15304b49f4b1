"""The job queue in a real PostgreSQL: every job claimed once by replicas racing for it, leases
that expire when a replica dies, fenced claims, and runners over one database and data dir
resuming a killed replica's job from its checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.backends import new_schema
from tests.tuner.fake_trainer import make_runner
from tests.tuner.test_jobs import recipe, steps_run, wait_for
from tuner.config import recipe_from_dict
from tuner.pg import Database
from tuner.pgjobs import PgJobStore

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def database(pg_url: str) -> Database:
    return Database(pg_url, new_schema())


def _queued(store: PgJobStore, n: int) -> list[str]:
    ids = [store.create(recipe_from_dict(recipe(f"job{i}"))) for i in range(n)]
    for job_id in ids:
        assert store.queued(job_id)
    return ids


def test_replicas_racing_for_the_queue_claim_every_job_exactly_once(database: Database) -> None:
    stores = [PgJobStore(database, "jobs", lease_s=60) for _ in range(2)]
    ids = _queued(stores[0], 40)
    taken: list[str] = []
    lock = threading.Lock()

    def drain(store: PgJobStore, owner: str) -> None:
        while (claim := store.claim(owner)) is not None:
            with lock:
                taken.append(claim[0])

    threads = [
        threading.Thread(target=drain, args=(stores[i % 2], f"replica{i}")) for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == sorted(ids)  # each once: none twice, none left
    assert all(len(stores[1].claims(j)) == 1 for j in ids)
    assert stores[1].ids_in("queued") == []
    assert {stores[0].get(j).attempts for j in ids} == {1}


def test_an_expired_lease_requeues_the_job_and_fences_the_old_claim(database: Database) -> None:
    a = PgJobStore(database, "jobs", lease_s=0.4)
    b = PgJobStore(database, "jobs", lease_s=30)
    (job_id,) = _queued(a, 1)
    assert a.claim("a") == (job_id, 1)
    old = a.fenced(1)
    old.progress(job_id, 1, 10, 0.5, None)
    assert b.expire() == []  # the lease still holds
    time.sleep(0.6)  # replica a is silent past its lease
    assert b.expire() == [job_id]
    assert b.get(job_id).state == "queued"
    assert old.beat(job_id) is False  # expired: the old claim is off even before a new one
    assert not old.finish(job_id, "succeeded", adapter="early-v1")
    assert b.claim("b") == (job_id, 2)
    new = b.fenced(2)
    assert old.beat(job_id) is False  # the old worker learns it lost the job
    old.progress(job_id, 7, 10, 0.1, None)
    assert not old.finish(job_id, "succeeded", adapter="stale-v1")
    assert new.beat(job_id) is True
    new.progress(job_id, 2, 10, 0.4, None)
    assert new.finish(job_id, "succeeded", adapter="fresh-v1")
    done = b.get(job_id)
    assert (done.state, done.adapter, done.step, done.attempts) == ("succeeded", "fresh-v1", 2, 2)
    assert done.loss_curve == [[1, 0.5], [2, 0.4]]  # nothing from the fenced-off claim
    assert b.claims(job_id) == [(1, "a"), (2, "b")]


def test_cancel_stops_waiting_jobs_at_once_and_flags_running_ones(database: Database) -> None:
    store = PgJobStore(database, "jobs", lease_s=60)
    waiting, running = _queued(store, 2)
    assert store.claim("a") == (waiting, 1)  # the older one runs
    waiting, running = running, waiting
    cancelled = store.cancel(waiting)
    assert (cancelled.state, cancelled.cancel_requested) == ("cancelled", False)
    flagged = store.cancel(running)
    assert (flagged.state, flagged.cancel_requested) == ("running", True)
    assert store.cancel_at(running) is not None and store.cancel_at(waiting) is None
    assert store.fenced(1).finish(running, "cancelled")


def test_a_renewed_lease_keeps_the_job(database: Database) -> None:
    a = PgJobStore(database, "jobs", lease_s=0.5)
    (job_id,) = _queued(a, 1)
    assert a.claim("a") is not None
    for _ in range(6):
        time.sleep(0.15)
        assert a.renew("a") == 1
    assert a.expire() == []
    assert a.get(job_id).state == "running"


def test_a_dead_replicas_validating_job_is_adopted_by_one_replica(database: Database) -> None:
    a = PgJobStore(database, "jobs", lease_s=0.3)
    job_id = a.create(recipe_from_dict(recipe("slow")), owner="a")
    others = [PgJobStore(database, "jobs", lease_s=30) for _ in range(3)]
    assert others[0].adopt("b0") == []
    time.sleep(0.5)
    adopted: list[list[str]] = []
    threads = [
        threading.Thread(target=lambda s=s, i=i: adopted.append(s.adopt(f"b{i}")))
        for i, s in enumerate(others)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(sum(adopted, [])) == [job_id]


def test_two_runners_over_one_database_run_each_job_once(
    tmp_path: Path, database: Database
) -> None:
    with (
        make_runner(tmp_path, step_s=0.02, database=database) as a,
        make_runner(tmp_path, step_s=0.02, database=database) as b,
    ):
        ids = [(a if i % 2 else b).submit(recipe(f"j{i}", steps=4)) for i in range(6)]
        for job_id in ids:
            done, _ = wait_for(lambda j=job_id: b.get(j), lambda j: j.state == "succeeded", 30)
            assert done.attempts == 1
            assert steps_run(a, job_id) == [1, 2, 3, 4]  # one run, not two
        assert {len(a.store.claims(j)) for j in ids} == {1}


SERVICE = """
import sys, time
from pathlib import Path
from tests.tuner.fake_trainer import make_runner
from tuner.pg import Database
database = Database(sys.argv[2], sys.argv[3])
with make_runner(Path(sys.argv[1]), step_s=0.1, database=database, lease_s=2, owner="doomed") as r:
    print(r.submit({recipe}), flush=True)
    time.sleep(60)
"""


def test_a_killed_replicas_job_is_resumed_by_another_from_its_checkpoint(
    tmp_path: Path, database: Database
) -> None:
    """The replica running a job is SIGKILLed; its worker stops by itself (its claim's replica
    is gone), the lease runs out and another replica resumes the job from its checkpoint."""
    script = SERVICE.format(recipe=recipe("resumed", steps=14, checkpoint_every=3))
    service = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path), database.url, database.schema],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert service.stdout is not None
    job_id = service.stdout.readline().strip()
    store = PgJobStore(database, "jobs", tmp_path)
    job, _ = wait_for(lambda: store.get(job_id), lambda j: j.step >= 4, 30)
    assert job.pid is not None
    service.send_signal(signal.SIGKILL)
    service.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and Path(f"/proc/{job.pid}").exists():
        time.sleep(0.05)
    assert not Path(f"/proc/{job.pid}").exists(), "the orphaned worker kept training"
    with make_runner(tmp_path, step_s=0.05, database=database, owner="survivor") as runner:
        done, _ = wait_for(lambda: runner.get(job_id), lambda j: j.state == "succeeded", 30)
        ran = steps_run(runner, job_id)
    starts = [int(x) for x in (runner.job_dir(job_id) / "starts.txt").read_text().split()]
    assert len(starts) == 2 and starts[0] == 0 and starts[1] in (3, 6, 9, 12)
    saved = starts[1]  # the checkpoint the second run resumed from: nothing lost, nothing twice
    assert ran == list(range(1, 15))[: len(ran) - (14 - saved)] + list(range(saved + 1, 15))
    assert job.step <= len(ran) - (14 - saved)  # the first run got at least as far as it said
    assert done.attempts == 2 and done.adapter == "resumed-v1"
    assert store.claims(job_id) == [(1, "doomed"), (2, "survivor")]
    assert [s for s, _ in done.loss_curve] == list(range(1, 15))

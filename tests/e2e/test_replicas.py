"""Two real `ragtune serve` processes on two ports over one PostgreSQL and one data dir, as a
team runs them behind a load balancer: what one is told, the other knows.

A document added through one is found and cited through the other as soon as the write
returns, and a delete through either is honoured by both; a promotion and a re-embedding switch
made through one take effect on the other within 2 s (LISTEN/NOTIFY); a tuning job runs on
exactly one replica, and when that replica is SIGKILLed mid-job the other resumes it from its
last checkpoint and registers the adapter once."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.backends import new_schema, pg_url
from tests.e2e.test_serve import _free_port, _ragtune
from tests.helpers import make_lora, wait_ready
from tuner.pg import Database
from tuner.pgjobs import PgJobStore
from tuner.pgregistry import PgRegistry

pytestmark = pytest.mark.slow
CHAT = b"".join(
    b'{"messages": [{"role": "user", "content": "How do I install package %d?"},'
    b' {"role": "assistant", "content": "Run apt install pkg%d as root."}]}\n' % (i, i)
    for i in range(16)
)


class Replica:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [_ragtune(), "serve", "--port", str(self.port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 180) -> None:
        if not wait_ready(self.base, self.proc, timeout):
            raise AssertionError(f"replica never became ready:\n{self.log.read_text()[-3000:]}")

    def get(self, path: str) -> Any:
        r = httpx.get(self.base + path, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.post(self.base + path, timeout=120, **kw)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _within(seconds: float, check: Callable[[], Any]) -> float:
    """Seconds until ``check()`` is truthy; fails after ``seconds``."""
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        if check():
            return time.monotonic() - began
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds} s")


def _search(replica: Replica, query: str) -> list[str]:
    body = {"query": query, "mode": "hybrid", "k": 5}
    r = replica.post("/v1/search", json=body)
    assert r.status_code == 200, r.text
    return [hit["doc_id"] for hit in r.json()["results"]]


@pytest.fixture(scope="module")
def cluster(
    tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[Replica], Database, Path]]:
    """Both replicas, started once for this module's tests (the last one kills one of them)."""
    tmp_path = tmp_path_factory.mktemp("replicas")
    database = Database(pg_url(), new_schema())
    env = {
        **os.environ,
        "RAGTUNE_GENERATOR": str(tiny_llama),
        "RAGTUNE_THREADS": "1",
        "RAGTUNE_DATA_DIR": str(tmp_path / "data"),
        "RAGTUNE_AUTH_DISABLED": "1",
        "RAGTUNE_DEVICE": "cpu",
        "RAGTUNE_DATABASE__JOB_LEASE_S": "3",
        **database.env(),
    }
    replicas = [Replica(env, tmp_path / f"replica{i}.log") for i in range(2)]
    try:
        for replica in replicas:
            replica.wait_ready()
        yield replicas, database, tmp_path
    finally:
        for replica in replicas:
            replica.stop()


def test_writes_promotions_and_switches_reach_every_replica(
    cluster: tuple[list[Replica], Database, Path], tiny_llama: Path, tiny_st: Path
) -> None:
    (a, b), database, tmp_path = cluster
    doc = {"id": "apt-basics", "text": "To install a package on Debian, run apt install NAME."}
    assert a.post("/v1/documents", json=doc).status_code == 201
    assert _search(b, "install a package with apt")[0] == "apt-basics"  # as soon as it returned
    asked = {"question": "How do I install a package?", "mode": "rag", "k": 2}
    cited = b.post("/v1/query", json={**asked, "max_new_tokens": 4}).json()["citations"]
    assert [c["doc_id"] for c in cited] == ["apt-basics"]
    assert b.post("/v1/documents", json={**doc, "text": "apt-get works too."}).status_code in (
        200,
        201,
    )
    assert a.get("/v1/documents/apt-basics")["version"] == 2
    assert httpx.delete(f"{b.base}/v1/documents/apt-basics", timeout=30).status_code == 200
    for replica in (a, b):
        assert "apt-basics" not in _search(replica, "install a package with apt")
        assert httpx.get(f"{replica.base}/v1/documents/apt-basics").status_code == 404

    # a promotion through a reaches b within 2 s (b's follower also loads it for its requests)
    weights = make_lora(tiny_llama, tmp_path / "lora", seed=3)
    registry = PgRegistry(tmp_path / "data" / "adapters", database)
    record = registry.save(
        lambda folder: [shutil.copy(f, folder / f.name) for f in weights.iterdir()],
        name="promo",
        base_model=str(tiny_llama),
    )
    assert a.post(f"/v1/adapters/{record.id}/promote", json={"force": True}).status_code == 200

    def promoted_on_b() -> bool:
        listed = b.get("/v1/adapters")["adapters"]
        return any(x["id"] == record.id and x["promoted"] for x in listed)

    assert _within(2.0, promoted_on_b) < 2.0
    _within(10.0, lambda: any(x["loaded"] for x in b.get("/v1/adapters")["adapters"]))
    answer = b.post("/v1/query", json={**asked, "mode": "ft", "max_new_tokens": 2})
    assert answer.status_code == 200 and answer.json()["adapter"] == record.id

    # a re-embedding switch through a: b searches with the new embedder within 2 s of it
    for i in range(3):
        text = f"Note {i}: the archive keeps package {i} signed."
        assert a.post("/v1/documents", json={"id": f"note-{i}", "text": text}).status_code == 201
    assert a.post("/v1/index/reindex", json={"embedder": str(tiny_st)}).status_code == 202
    _within(60.0, lambda: a.get("/v1/index")["embedder"]["name"] == tiny_st.name)
    assert _within(2.0, lambda: b.get("/v1/index")["embedder"]["name"] == tiny_st.name) < 2.0
    assert "note-1" in _search(b, "package 1 signed")


def test_a_job_runs_once_and_survives_the_sigkill_of_its_replica(
    cluster: tuple[list[Replica], Database, Path],
) -> None:
    (a, b), database, tmp_path = cluster
    files = {"file": ("train.jsonl", CHAT, "application/jsonl")}
    file_id = a.post("/v1/files", files=files).json()["id"]
    hp = {"max_steps": 400, "checkpoint_every": 20, "batch_size": 2, "eval_every": 100_000}
    body = {"method": "lora", "dataset": file_id, "hyperparameters": hp, "name": "survivor"}
    created = b.post("/v1/tune/jobs", json=body)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    store = PgJobStore(database, "jobs")
    try:
        _within(120.0, lambda: a.get(f"/v1/tune/jobs/{job_id}")["progress"]["step"] >= 25)
    except AssertionError:
        log = tmp_path / "data" / "jobs" / job_id / "log.txt"
        tail = log.read_text()[-3000:] if log.exists() else "(no log)"
        raise AssertionError(f"{a.get(f'/v1/tune/jobs/{job_id}')}\n{tail}") from None
    [(_, owner)] = store.claims(job_id)  # one replica runs it
    running = next(r for r in (a, b) if owner.split(":")[1] == str(r.proc.pid))
    other = b if running is a else a
    worker = store.get(job_id).pid
    assert worker is not None
    running.proc.send_signal(signal.SIGKILL)
    running.proc.wait()
    killed_at = store.get(job_id)
    assert killed_at.state == "running" and killed_at.step < 400  # killed mid-job
    _within(5.0, lambda: not Path(f"/proc/{worker}").exists())  # its worker stopped by itself
    done = _within_state(other, job_id, "succeeded", 240.0)
    assert done["attempts"] == 2, done
    claims = store.claims(job_id)
    assert [c for c, _ in claims] == [1, 2] and claims[1][1].split(":")[1] == str(other.proc.pid)
    steps = [s for s, _ in done["loss_curve"]]
    assert steps == list(range(1, 401))  # every update once in the curve, resumed not restarted
    log = (tmp_path / "data" / "jobs" / job_id / "log.txt").read_text()
    resumed = re.findall(r"resuming survivor from update (\d+)", log)
    assert len(resumed) == 1 and int(resumed[0]) >= 20, log[-2000:]  # a checkpoint, not update 0
    assert int(resumed[0]) % hp["checkpoint_every"] == 0
    adapters = [x["id"] for x in other.get("/v1/adapters")["adapters"]]
    assert adapters.count(done["adapter"]) == 1 and done["adapter"] == "survivor-v1"
    assert other.get(f"/v1/tune/jobs/{job_id}")["state"] == "succeeded"


def _within_state(replica: Replica, job_id: str, state: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    job: dict = {}
    while time.monotonic() < deadline:
        job = replica.get(f"/v1/tune/jobs/{job_id}")
        if job["state"] == state:
            return job
        assert job["state"] not in ("failed", "cancelled"), job
        time.sleep(0.3)
    raise AssertionError(f"job never {state}: {job}")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))

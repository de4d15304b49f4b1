"""Retrieval quality on the Debian FAQ: recall@1/5/10 and MRR@10 for dense, sparse and hybrid.

Builds the dataset with ``ragtune data debian-faq`` (FAQ answers plus Debian Reference sections as
distractors), ingests every document into an index with the default embedder, and runs all
147 FAQ questions through each retrieval mode and fusion setting, beside the naive baseline
"one vector per document": one embedding of each document's title and text (cut by the
embedder's ``max_seq_length``, 256 tokens for MiniLM), exact search. An index kept from an
older ragtune whose chunks were embedded without their context is re-embedded first
(``Retriever.reindex``). Last, the hybrid share is fitted on pseudo-queries as the service does once
an index is built (``Retriever.fit_fusion``) and the default hybrid is measured with it. Writes
benchmarks/results/retrieval_quality.json.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/retrieval_quality.py --lang en zh
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from eval.metrics import dedupe, retrieval_report
from retriever.config import RetrieverConfig
from retriever.embedder import load_embedder
from retriever.index import FITTED_KEY, DocumentIn, Retriever

SETTINGS = [  # (label, mode, fusion, fixed dense weight or None for the defaults)
    ("dense", "dense", "weighted", None),
    ("sparse (BM25)", "sparse", "weighted", None),
    ("hybrid rrf w=0.5", "hybrid", "rrf", 0.5),
    ("hybrid rrf w=0.2", "hybrid", "rrf", 0.2),
    ("hybrid weighted w=0.5", "hybrid", "weighted", 0.5),
    ("hybrid weighted w=0.3", "hybrid", "weighted", 0.3),
    ("hybrid weighted w=0.2", "hybrid", "weighted", 0.2),
    ("hybrid (unfitted defaults)", "hybrid", "weighted", None),
]
FITTED = "hybrid (defaults: share fitted on pseudo-queries)"


BASELINE = "one vector per document"


def one_vector_per_document(
    docs: list[dict], queries: list[dict], embedder, k: int
) -> dict[str, list[str]]:
    """The naive baseline's top ``k`` document ids per query: exact inner product between
    the query and one unit vector per document over its title and text."""
    texts = [f"{d['metadata'].get('title', '')}\n{d['text']}".strip() for d in docs]
    vectors = np.asarray(embedder.encode(texts), dtype=np.float32)  # (n_docs, dim)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-12
    qvecs = np.asarray(embedder.encode([q["text"] for q in queries]), dtype=np.float32)
    top = np.argsort(-(qvecs @ vectors.T), axis=1)[:, :k]  # (n_queries, k)
    return {q["_id"]: [docs[j]["id"] for j in row] for q, row in zip(queries, top, strict=True)}


def load_dataset(lang: str, data_root: Path) -> Path:
    out = data_root / f"debian-faq-{lang}"
    if not (out / "queries.jsonl").exists():
        subprocess.run(
            [sys.executable, "-m", "eval", "data", "debian-faq", "--lang", lang, "--out", str(out)],
            check=True,
        )
    return out


def read_beir(folder: Path) -> tuple[list[dict], list[dict], dict[str, set[str]]]:
    """Documents, queries and qrels of a dataset written by ``ragtune data debian-faq``."""
    queries = [json.loads(line) for line in (folder / "queries.jsonl").open()]
    qrels: dict[str, set[str]] = {}
    for line in (folder / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        q, d, _ = line.split("\t")
        qrels.setdefault(q, set()).add(d)
    docs = [
        json.loads(line)
        for f in sorted((folder / "documents").glob("*.jsonl"))
        for line in f.open()
    ]
    return docs, queries, qrels


def search_report(
    r: Retriever, queries: list[dict], qrels: dict[str, set[str]], mode: str = "hybrid", k: int = 10
) -> dict[str, float]:
    """Recall@1/5/10 and MRR@10 of ``r`` on ``queries``, each query's distinct documents from
    its top ``3k`` chunks, rounded to three places."""
    runs = {
        q["_id"]: dedupe([h.doc_id for h in r.search(q["text"], k=k * 3, mode=mode)])
        for q in queries
    }
    return {m: round(v, 3) for m, v in retrieval_report(runs, qrels).items()}


def forget_fit(r: Retriever) -> None:
    """Drop a stored fusion fit, so the configured shares apply (a fit kept from an earlier run
    would override them)."""
    r.store.set_meta(FITTED_KEY, "{}")


def evaluate(folder: Path, embedder, index_dir: Path, k: int = 10) -> dict[str, dict[str, float]]:
    docs, queries, qrels = read_beir(folder)
    results = {}
    defaults = RetrieverConfig()
    r = Retriever(index_dir, embedder)  # kept between runs: unchanged documents are not re-embedded
    t0 = time.perf_counter()
    for i in tqdm(range(0, len(docs), 64), desc=f"ingest {folder.name}", unit="batch"):
        r.upsert_many([DocumentIn(d["text"], d["id"], d["metadata"]) for d in docs[i : i + 64]])
    if r.needs_reembedding:  # an index kept from a ragtune that embedded bare chunk texts
        r.reindex(embedder)
    forget_fit(r)
    print(
        f"{folder.name}: {len(docs)} documents, {r.chunk_count} chunks, "
        f"ingest (or check) took {time.perf_counter() - t0:.1f}s"
    )
    for label, mode, fusion, weight in SETTINGS:
        r.config.fusion = fusion
        r.config.dense_weight = defaults.dense_weight if weight is None else weight
        r.config.foreign_dense_weight = defaults.foreign_dense_weight if weight is None else weight
        results[label] = search_report(r, queries, qrels, mode, k)
    r.config = RetrieverConfig()
    fit = r.fit_fusion()  # what the service runs in the background once the index is built
    results[FITTED] = search_report(r, queries, qrels, "hybrid", k)
    results["fit"] = {key: fit[key] for key in ("queries", "weights", "why", "recall")}
    r.close()
    runs = one_vector_per_document(docs, queries, embedder, k)
    results[BASELINE] = {m: round(v, 3) for m, v in retrieval_report(runs, qrels).items()}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lang", nargs="+", default=["en", "zh"], choices=["en", "zh"])
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "retrieval_quality.json"
    )
    parser.add_argument(
        "--index", type=Path, default=None, help="index folders' parent (default: --data)"
    )
    args = parser.parse_args()
    embedder = load_embedder()
    report = {"embedder": embedder.identity["name"], "config": RetrieverConfig().__dict__}
    for lang in args.lang:
        report[lang] = evaluate(
            load_dataset(lang, args.data), embedder, (args.index or args.data) / f"index-{lang}"
        )
        print(f"\n{lang}: {'setting':26} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'MRR@10':>7}")
        for label, m in report[lang].items():
            if label == "fit":
                print(f"    fitted dense share: {m['weights']} ({m['why']})")
                continue
            print(
                f"    {label:26} {m['recall@1']:6.3f} {m['recall@5']:6.3f} "
                f"{m['recall@10']:6.3f} {m['mrr@10']:7.3f}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()

"""BM25 recall on the Debian FAQ for each CJK analysis: character bigrams, unigrams, or both.

Builds the Debian FAQ development sets as benchmarks/retrieval_quality.py does (``ragtune data
debian-faq``: FAQ answers plus Debian Reference sections as distractors), chunks every document
as the index does (retriever.chunking.split with the default chunk size and overlap), and runs
all 147 FAQ questions through a sparse-only index (retriever.sparse.SparseIndex, no embedder)
once per analysis: bigrams, unigrams, both in one index, both with the bigrams counted twice, and
"bigrams | unigrams", two BM25 fields (one per analysis) whose scores are averaged. Only CJK runs
are analysed differently, so English must rank every query identically under every analysis; the
script checks that. Writes benchmarks/results/cjk_analysis.json.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/cjk_analysis.py --lang en zh
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # run as a script: import the sibling benchmark

from retrieval_quality import load_dataset, read_beir  # noqa: E402

from eval.metrics import dedupe, retrieval_report  # noqa: E402
from retriever.chunking import split  # noqa: E402
from retriever.config import RetrieverConfig  # noqa: E402
from retriever.sparse import (  # noqa: E402
    CjkAnalysis,
    SparseIndex,
    cjk_bigrams,
    cjk_unigrams,
    cjk_unigrams_bigrams,
)


def unigrams_double_bigrams(run: str) -> list[str]:
    """Unigrams plus every bigram twice: the bigrams weigh more than the single characters."""
    pairs = cjk_bigrams(run) if len(run) > 1 else []
    return list(run) + pairs + pairs


# label -> the fields of the index: one BM25 index per CJK analysis, scores averaged
ANALYSES: dict[str, tuple[CjkAnalysis, ...]] = {
    "bigrams": (cjk_bigrams,),
    "unigrams": (cjk_unigrams,),
    "unigrams+bigrams": (cjk_unigrams_bigrams,),
    "unigrams+2x bigrams": (unigrams_double_bigrams,),
    "bigrams | unigrams": (cjk_bigrams, cjk_unigrams),
}


def chunk_corpus(
    docs: list[dict], config: RetrieverConfig
) -> tuple[list[int], list[str], list[str]]:
    """Chunk ids, chunk texts and the document id of each chunk, split as the index splits."""
    texts, owners = [], []
    for d in docs:
        for c in split(d["text"], config.chunk_size, config.chunk_overlap):
            texts.append(c.text)
            owners.append(d["id"])
    return list(range(len(texts))), texts, owners


def evaluate(folder: Path, k: int = 10) -> tuple[dict[str, dict[str, float]], bool]:
    """Sparse-only metrics per analysis, and whether every analysis ranked every query alike.
    Chunk hits are fetched 3k deep and deduped to documents, as retrieval_quality.py ranks them."""
    docs, queries, qrels = read_beir(folder)
    ids, texts, owners = chunk_corpus(docs, RetrieverConfig())
    print(f"{folder.name}: {len(docs)} documents, {len(texts)} chunks")
    results: dict[str, dict[str, float]] = {}
    rankings = []
    for label, fields in ANALYSES.items():
        t0 = time.perf_counter()
        index = SparseIndex(ids, texts, fields)
        built = time.perf_counter() - t0
        runs = {
            q["_id"]: dedupe([owners[c] for c, _ in index.search(q["text"], k * 3)])
            for q in queries
        }
        rankings.append(runs)
        metrics = {m: round(v, 3) for m, v in retrieval_report(runs, qrels).items()}
        results[label] = {**metrics, "build_s": round(built, 2), "vocab": index.vocabulary}
    return results, all(r == rankings[0] for r in rankings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lang", nargs="+", default=["en", "zh"], choices=["en", "zh"])
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "cjk_analysis.json"
    )
    args = parser.parse_args()
    config = RetrieverConfig()
    report: dict = {"chunk_size": config.chunk_size, "chunk_overlap": config.chunk_overlap}
    for lang in args.lang:
        report[lang], alike = evaluate(load_dataset(lang, args.data))
        report[f"{lang}_rankings_identical"] = alike
        print(f"\n{lang}: {'CJK analysis':22} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'MRR@10':>7}")
        for label, m in report[lang].items():
            print(
                f"    {label:22} {m['recall@1']:6.3f} {m['recall@5']:6.3f} "
                f"{m['recall@10']:6.3f} {m['mrr@10']:7.3f}"
            )
        print(f"    every analysis ranks every query alike: {alike}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()

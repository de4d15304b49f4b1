"""Chunk size and overlap, measured: recall@10 and MRR@10 of dense, sparse and default hybrid
search (at the default shares, and at the share fitted on pseudo-queries) on the Debian FAQ en
and zh sets for each (chunk_size, chunk_overlap) pair.

Each pair gets its own index (kept under --index, so a rerun only searches), built with the
default embedder from the ``ragtune data debian-faq`` documents, Markdown-aware splitting and
chunk context as in the service. Writes benchmarks/results/chunking_sweep.json.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/chunking_sweep.py --sizes 400 600 900 --overlaps 80
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from retrieval_quality import forget_fit, load_dataset, read_beir, search_report  # noqa: E402

from retriever.config import RetrieverConfig  # noqa: E402
from retriever.embedder import load_embedder  # noqa: E402
from retriever.index import DocumentIn, Retriever  # noqa: E402


def measure(folder: Path, index: Path, embedder, size: int, overlap: int) -> dict:
    docs, queries, qrels = read_beir(folder)
    config = RetrieverConfig(chunk_size=size, chunk_overlap=overlap)
    r = Retriever(index, embedder, config)
    started = time.perf_counter()
    for i in range(0, len(docs), 64):
        r.upsert_many([DocumentIn(d["text"], d["id"], d["metadata"]) for d in docs[i : i + 64]])
    out: dict = {"chunks": r.chunk_count, "ingest_s": round(time.perf_counter() - started, 1)}
    forget_fit(r)  # unfitted first: the configured default shares

    def scores(mode: str) -> dict[str, float]:
        report = search_report(r, queries, qrels, mode)
        return {m: report[m] for m in ("recall@10", "mrr@10")}

    for mode in ("dense", "sparse", "hybrid"):
        out[mode] = scores(mode)
    out["fitted_share"] = r.fit_fusion()["weights"]  # then fitted, as the service does
    out["hybrid fitted"] = scores("hybrid")
    r.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lang", nargs="+", default=["en", "zh"], choices=["en", "zh"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[400, 600, 900])
    parser.add_argument("--overlaps", nargs="+", type=int, default=[80])
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--index", type=Path, default=Path("data") / "chunking-sweep")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "chunking_sweep.json"
    )
    args = parser.parse_args()
    embedder = load_embedder()
    report: dict = json.loads(args.out.read_text()) if args.out.exists() else {}
    for lang in args.lang:
        folder = load_dataset(lang, args.data)
        for size in args.sizes:
            for overlap in args.overlaps:
                key = f"{size}/{overlap}"
                index = args.index / f"{lang}-{size}-{overlap}"
                report.setdefault(lang, {})[key] = m = measure(
                    folder, index, embedder, size, overlap
                )
                print(
                    f"{lang} size {size:5} overlap {overlap:4}: {m['chunks']:5} chunks, R@10 "
                    f"dense {m['dense']['recall@10']:.3f} sparse {m['sparse']['recall@10']:.3f} "
                    f"hybrid {m['hybrid']['recall@10']:.3f} "
                    f"fitted {m['hybrid fitted']['recall@10']:.3f}",
                    flush=True,
                )
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Quality of synthetic questions on the Debian FAQ (en): extractive patterns vs model-written.

Indexes the dataset's documents (FAQ answers + Debian Reference sections; never the FAQ
questions) into a throwaway folder with the default embedder, makes extractive pairs and a
sample of model-written pairs (SmolLM2-135M; slow on CPU), and measures per method: the share
of questions whose source chunk is in the dense top 1/3/10 for the question, how much of the
answer the question repeats (a copy-the-answer question scores high), whether the answer is a
sentence of its chunk, mean lengths, and prints samples to read. The FAQ questions are read
only at the end, to count synthetic questions that coincide with one (leakage into an eval).
Writes benchmarks/results/synth_quality.json.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/synth_quality.py --model-sample 40
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean

from retriever.embedder import load_embedder
from retriever.index import DocumentIn, Retriever
from service.settings import get_settings
from tuner import synth
from tuner.models import load_generator


def dataset(data_root: Path) -> Path:
    out = data_root / "debian-faq-en"
    if not (out / "documents").is_dir():
        cmd = [sys.executable, "-m", "eval", "data", "debian-faq", "--lang", "en"]
        subprocess.run([*cmd, "--out", str(out)], check=True)
    return out


def measure(pairs: list[synth.QAPair], retriever: Retriever) -> dict[str, float]:
    ranks = []
    for p in pairs:
        ids = [h.chunk_id for h in retriever.search(p.question, 10, mode="dense")]
        ranks.append(ids.index(p.chunk_id) + 1 if p.chunk_id in ids else None)
    n = max(len(pairs), 1)
    return {
        "pairs": len(pairs),
        "source_top1": round(sum(r is not None and r <= 1 for r in ranks) / n, 3),
        "source_top3": round(sum(r is not None and r <= 3 for r in ranks) / n, 3),
        "source_top10": round(sum(r is not None for r in ranks) / n, 3),
        "answer_copied_share": round(mean(synth.copy_share(p.question, p.answer) for p in pairs), 3)
        if pairs
        else 0.0,
        "question_words_in_answer": round(
            mean(
                len(synth.content_words(p.question) & synth.content_words(p.answer))
                / max(len(synth.content_words(p.question)), 1)
                for p in pairs
            ),
            3,
        )
        if pairs
        else 0.0,
        "answer_in_chunk": round(sum(p.answer in p.context for p in pairs) / n, 3),
        "question_words": round(mean(len(p.question.split()) for p in pairs), 1) if pairs else 0.0,
        "answer_words": round(mean(len(p.answer.split()) for p in pairs), 1) if pairs else 0.0,
    }


def samples(pairs: list[synth.QAPair], k: int, seed: int) -> list[dict[str, str]]:
    picked = random.Random(seed).sample(pairs, min(k, len(pairs)))
    return [{"q": p.question, "a": p.answer, "method": p.method, "doc": p.doc_id} for p in picked]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--model-sample", type=int, default=40, help="model-written pairs wanted")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "synth_quality.json"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("tuner.synth").setLevel(logging.INFO)  # model_pairs: replies kept
    folder = dataset(args.data)
    docs = [
        json.loads(line)
        for f in sorted((folder / "documents").glob("*.jsonl"))
        for line in f.open()
    ]
    embedder = load_embedder()
    report: dict = {"dataset": str(folder), "documents": len(docs), "seed": args.seed}
    with tempfile.TemporaryDirectory() as tmp:
        r = Retriever(Path(tmp) / "index", embedder)
        t0 = time.perf_counter()
        for i in range(0, len(docs), 64):
            r.upsert_many([DocumentIn(d["text"], d["id"], d["metadata"]) for d in docs[i : i + 64]])
        chunks = synth.index_chunks(r)
        report["chunks"] = len(chunks)
        took = time.perf_counter() - t0
        print(f"indexed {len(docs)} documents, {len(chunks)} chunks in {took:.0f}s", flush=True)

        t0 = time.perf_counter()
        extractive = synth.extractive_pairs(chunks, 100_000, args.seed)
        report["extractive"] = measure(extractive, r) | {
            "seconds": round(time.perf_counter() - t0, 1),
            "chunks_with_a_pair": len({p.chunk_id for p in extractive}),
            "by_pattern": {
                m: measure([p for p in extractive if p.method == m], r)
                for m in sorted(synth.method_counts(extractive))
            },
        }

        generator = load_generator(cache_dir=get_settings().model_cache)
        t0 = time.perf_counter()
        model = synth.model_pairs(chunks, generator, args.model_sample, args.seed)
        took = time.perf_counter() - t0
        report["model"] = measure(model, r) | {"seconds": round(took, 1)}
        report["model"]["seconds_per_pair"] = round(took / max(len(model), 1), 1)
        ex_same = [p for p in extractive if p.chunk_id in {m.chunk_id for m in model}]
        report["extractive_on_model_chunks"] = measure(ex_same, r)
        r.close()

    faq = {synth.normalize(json.loads(line)["text"]) for line in (folder / "queries.jsonl").open()}
    report["faq_question_collisions"] = {
        "extractive": sum(synth.normalize(p.question) in faq for p in extractive),
        "model": sum(synth.normalize(p.question) in faq for p in model),
    }
    report["samples"] = {"extractive": samples(extractive, 10, 1), "model": samples(model, 10, 1)}
    for name in ("extractive", "model"):
        m = report[name]
        print(f"\n{name}: {json.dumps({k: v for k, v in m.items() if k != 'by_pattern'})}")
        for s in report["samples"][name]:
            print(f"  [{s['method']}] Q: {s['q']}\n      A: {s['a'][:160]}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()

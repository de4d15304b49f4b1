"""Acceptance of RAFT tuning: hybrid mode (RAFT LoRA + retrieval) against rag mode (base model +
retrieval) on the Debian FAQ's 147 questions, by token F1 and ROUGE-L against the FAQ answers,
with a paired bootstrap 95% interval of the difference.

The adapter is trained only on data synthesised from the indexed documents (configs/raft-
hybrid.yaml: questions written from chunks, never an FAQ question). Both systems see the same
passages (one retrieval per question, the serving prompt) and decode greedily through the
serving engine. Writes benchmarks/results/raft_acceptance.json and the answers beside it.

    export RAGTUNE_DATA_DIR=data/accept HF_HUB_OFFLINE=1
    .venv/bin/ragtune data debian-faq --lang en --out data/debian-faq-en
    .venv/bin/ragtune ingest data/debian-faq-en/documents
    .venv/bin/ragtune tune --recipe configs/raft-hybrid.yaml
    .venv/bin/python benchmarks/raft_acceptance.py --adapter raft-hybrid-v1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.answers import rouge_l, token_f1  # noqa: E402
from eval.stats import paired, resample_indices  # noqa: E402
from service.adapters import AdapterSet  # noqa: E402
from service.generation.engine import GenerationEngine  # noqa: E402
from service.loading import generator_from_settings, open_retriever  # noqa: E402
from service.settings import Settings  # noqa: E402
from tuner.prompts import rag_messages  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", required=True, help="registry id of the RAFT adapter")
    parser.add_argument("--queries", type=Path, default=Path("data/debian-faq-en/queries.jsonl"))
    parser.add_argument("--k", type=int, default=3, help="passages per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--limit", type=int, default=None, help="first N questions only")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "raft_acceptance.json"
    )
    args = parser.parse_args()
    queries = [json.loads(line) for line in args.queries.read_text().splitlines() if line.strip()]
    queries = [q for q in queries if q.get("answer")][: args.limit]
    settings = Settings()
    retriever = open_retriever(settings)
    try:
        prompts = [rag_messages(q["text"], retriever.search(q["text"], k=args.k)) for q in queries]
    finally:
        retriever.close()
    gen = generator_from_settings(settings)
    adapters = AdapterSet(gen, settings.data_dir / "adapters")
    adapters.load(args.adapter)
    engine = GenerationEngine(gen, max_batch=16, adapters=adapters)
    answers: dict[str, list[str]] = {}
    seconds: dict[str, float] = {}
    try:
        for mode, adapter in (("rag", None), ("hybrid", args.adapter)):
            t0 = time.perf_counter()
            jobs = [engine.submit(p, args.max_new_tokens, adapter=adapter) for p in prompts]
            answers[mode] = [j.wait(3600).text.strip() for j in jobs]
            seconds[mode] = time.perf_counter() - t0
            print(f"{mode}: {len(jobs)} answers in {seconds[mode]:.0f} s", flush=True)
    finally:
        engine.close()
    refs = [q["answer"] for q in queries]
    scores = {
        mode: {
            "token_f1": [token_f1(a, r) for a, r in zip(answers[mode], refs, strict=True)],
            "rouge_l": [rouge_l(a, r) for a, r in zip(answers[mode], refs, strict=True)],
        }
        for mode in answers
    }
    result = {
        "adapter": args.adapter,
        "questions": len(queries),
        "k": args.k,
        "max_new_tokens": args.max_new_tokens,
        "seconds": seconds,
        "mean": {
            mode: {m: sum(v) / len(v) for m, v in by_metric.items()}
            for mode, by_metric in scores.items()
        },
        "hybrid_minus_rag": {
            m: paired(scores["rag"][m], scores["hybrid"][m], resample_indices(len(refs), 10_000, 0))
            for m in ("token_f1", "rouge_l")
        },
        "adapter_metrics": _adapter_metrics(settings, args.adapter),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    with args.out.with_suffix(".answers.jsonl").open("w") as f:
        for i, q in enumerate(queries):
            row = {"id": q["_id"], "question": q["text"], "reference": q["answer"]}
            row.update({mode: answers[mode][i] for mode in answers})
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    for m, d in result["hybrid_minus_rag"].items():
        rag, hyb = result["mean"]["rag"][m], result["mean"]["hybrid"][m]
        print(
            f"{m}: rag {rag:.4f}  hybrid {hyb:.4f}  diff {d['mean_diff']:+.4f} "
            f"95% CI [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"
        )


def _adapter_metrics(settings: Settings, adapter: str) -> dict:
    meta = settings.data_dir / "adapters" / adapter / "ragtune.json"
    if not meta.is_file():
        return {}
    metrics = json.loads(meta.read_text()).get("metrics", {})
    return {k: v for k, v in metrics.items() if k not in ("loss_curve", "val_curve")}


if __name__ == "__main__":
    main()

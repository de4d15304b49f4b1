"""Acceptance of the retriever tuner: fine-tune the default embedder on pseudo-queries cut from
the Chinese Debian documents alone (no FAQ question is used for training) and measure recall on
the Chinese FAQ before and after, and on the English FAQ as a check that English does not degrade.

Bar: on the Chinese FAQ (Debian Reference distractors) dense recall@10 rises by at least 0.15 and
hybrid recall@10 after tuning beats BM25 alone; on the English FAQ dense recall@10 with the tuned
embedder loses no more than 0.02. The tuner runs as ``ragtune tune --recipe`` runs it: the
recipe's pairs and hard negatives from the live zh index (``prepare_pairs``), training into a
registry (``train_retriever``), the embedder loaded back from the registry (it keeps its base's
languages, so hybrid search gives Chinese queries the foreign dense share), then the live
re-embedding and switch. The untuned indexes are built once under ``--work`` and copied for each
run. Writes benchmarks/results/retriever_tune_<label>.json (or ``--out``).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/retriever_tune_acceptance.py --sweep 0.2 0.3
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/retriever_tune_acceptance.py \\
        --set retriever.negatives=1 --label negatives1
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.retrieval_quality import load_dataset, read_beir  # noqa: E402
from eval.metrics import dedupe, retrieval_report  # noqa: E402
from retriever.embedder import Embedder, load_embedder, load_tuned_embedder  # noqa: E402
from retriever.index import DocumentIn, Retriever  # noqa: E402
from tuner.config import load_recipe  # noqa: E402
from tuner.embed_train import train_retriever  # noqa: E402
from tuner.prepare import prepare_pairs  # noqa: E402
from tuner.registry import Registry  # noqa: E402

log = logging.getLogger("retriever_tune_acceptance")
EMBEDDER = "all-MiniLM-L6-v2"
ZH_MODES = ("dense", "sparse", "hybrid")
EN_MODES = ("dense", "hybrid")
SWEEP_KEY = "zh_hybrid_minus_bm25_at_fixed_weight"
MIN_DENSE_GAIN = 0.15
MAX_EN_LOSS = 0.02


def fresh_index(folder: Path, work: Path, run: Path, embedder: Embedder) -> Retriever:
    """A copy, under ``run``, of the untuned index of ``folder``'s documents (built once in
    ``work`` and kept, so later runs skip the ingest)."""
    base = work / f"index-{folder.name}"
    if not (base / "COMPLETE").exists():
        shutil.rmtree(base, ignore_errors=True)
        docs, _, _ = read_beir(folder)
        t0 = time.perf_counter()
        r = Retriever(base, embedder)
        for i in range(0, len(docs), 64):
            r.upsert_many([DocumentIn(d["text"], d["id"], d["metadata"]) for d in docs[i : i + 64]])
            log.info("ingest %s: %d/%d documents", folder.name, min(i + 64, len(docs)), len(docs))
        log.info("%s: %d chunks in %.0fs", folder.name, r.chunk_count, time.perf_counter() - t0)
        r.close()
        (base / "COMPLETE").write_text("")
    target = run / f"index-{folder.name}"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(base, target)
    return Retriever(target, embedder)


def measure_before(
    r: Retriever, folder: Path, work: Path, modes: tuple[str, ...], sweep: tuple[float, ...]
) -> dict[str, Any]:
    """``measure`` on the untuned index, kept beside its base copy in ``work`` (same documents,
    same embedder: the same numbers every run)."""
    cache = work / f"index-{folder.name}" / f"before-{'-'.join(modes)}-{sweep}.json"
    if cache.exists():
        log.info("%s before: from %s", folder.name, cache)
        return json.loads(cache.read_text())
    out = measure(r, folder, modes, sweep)
    cache.write_text(json.dumps(out, indent=2))
    return out


def measure(
    r: Retriever, folder: Path, modes: tuple[str, ...], sweep: tuple[float, ...], k: int = 10
) -> dict[str, Any]:
    """recall@1/5/10 and MRR@10 of each mode (hybrid at the retriever's defaults for the
    embedder, plus fixed dense weights of weighted fusion in ``sweep``) over the FAQ
    questions."""
    _, queries, qrels = read_beir(folder)

    def run(mode: str) -> dict[str, float]:
        ranked = {
            q["_id"]: dedupe([h.doc_id for h in r.search(q["text"], k=k * 3, mode=mode)])
            for q in queries
        }
        return {m: round(v, 3) for m, v in retrieval_report(ranked, qrels).items()}

    out: dict[str, Any] = {mode: run(mode) for mode in modes}
    if "hybrid" in modes:
        out["hybrid_dense_weight"] = r.dense_weight_for(queries[0]["text"])
        dense_w, foreign_w = r.config.dense_weight, r.config.foreign_dense_weight
        for w in sweep:
            r.config.dense_weight = r.config.foreign_dense_weight = w
            out[f"hybrid w={w}"] = run("hybrid")
        r.config.dense_weight, r.config.foreign_dense_weight = dense_w, foreign_w
    log.info("%s: %s", folder.name, {m: out[m]["recall@10"] for m in modes})
    return out


def tune(r: Retriever, run_dir: Path, args: argparse.Namespace) -> tuple[Any, dict, dict]:
    """The retriever tuner as ``ragtune tune`` runs it: the recipe's pairs and hard negatives
    from the live index (``prepare_pairs``), training into a registry under ``run_dir``
    (``train_retriever``), and the saved embedder loaded back from the registry."""
    recipe = load_recipe(args.recipe, list(args.set))
    recipe.base_model = EMBEDDER
    job_dir = run_dir / "job"
    shutil.rmtree(job_dir, ignore_errors=True)
    t0 = time.perf_counter()
    prepared = prepare_pairs(recipe, job_dir, files_dir=run_dir / "files", retriever=r)
    manifest = json.loads((job_dir / "data" / "manifest.json").read_text())
    pairs = {
        "train": prepared.train,
        "held_out": prepared.val,
        "negatives_mean": manifest["negatives_mean"],
        "chunks": r.chunk_count,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    log.info("pairs: %s", pairs)
    t0 = time.perf_counter()
    record = train_retriever(recipe, job_dir, data_dir=run_dir, device="cpu")
    training = {**record.metrics, "train_seconds": round(time.perf_counter() - t0, 1)}
    training["adapter"], training["recipe"] = record.id, recipe.to_dict()
    registry = Registry(run_dir / "adapters")
    tuned = load_tuned_embedder(
        registry.folder(record.id), record.id, method=record.method, base=EMBEDDER
    )
    return tuned, training, pairs


def verdict(zh: dict[str, Any], en: dict[str, Any]) -> dict[str, Any]:
    gain = zh["after"]["dense"]["recall@10"] - zh["before"]["dense"]["recall@10"]
    hybrid, bm25 = zh["after"]["hybrid"]["recall@10"], zh["after"]["sparse"]["recall@10"]
    loss = en["before"]["dense"]["recall@10"] - en["after"]["dense"]["recall@10"]
    checks = {
        "zh_dense_gain": {"value": round(gain, 3), "bar": f">= {MIN_DENSE_GAIN}"},
        "zh_hybrid_beats_bm25": {"value": round(hybrid - bm25, 3), "bar": "> 0"},
        "en_dense_loss": {"value": round(loss, 3), "bar": f"<= {MAX_EN_LOSS}"},
    }
    checks["zh_dense_gain"]["pass"] = gain >= MIN_DENSE_GAIN - 1e-9
    checks["zh_hybrid_beats_bm25"]["pass"] = hybrid > bm25
    checks["en_dense_loss"]["pass"] = loss <= MAX_EN_LOSS + 1e-9
    checks["all_pass"] = all(c["pass"] for c in checks.values())  # type: ignore[index]
    checks[SWEEP_KEY] = {  # not part of the bar: what a weight gives
        name: round(m["recall@10"] - bm25, 3)
        for name, m in zh["after"].items()
        if name.startswith("hybrid w=")
    }
    return checks


def progress(done: int, total: int) -> None:
    log.info("re-embedded %d/%d chunks", done, total)


def print_table(report: dict[str, Any]) -> None:
    print(
        f"\n{report['label']}: {'index / setting':30} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'MRR':>6}"
    )
    for lang in ("zh", "en"):
        for when in ("before", "after"):
            for name, m in report[lang][when].items():
                if isinstance(m, dict):
                    print(
                        f"    {lang} {when:6} {name:20} {m['recall@1']:6.3f} {m['recall@5']:6.3f}"
                        f" {m['recall@10']:6.3f} {m['mrr@10']:6.3f}"
                    )
    t = report["training"]
    print(
        f"    IR evaluator recall@10 {t['recall@10_before']:.3f} -> {t['recall@10_after']:.3f}, "
        f"train {t['train_seconds']}s on {t['pairs']} pairs "
        f"({t['hard_negatives_per_pair']} hard negatives each), adapter {t['adapter']}"
    )
    for name, c in report["criteria"].items():
        if isinstance(c, dict) and "pass" in c:
            mark = "PASS" if c["pass"] else "FAIL"
            print(f"    {name:22} {c['value']:+.3f} (bar {c['bar']}): {mark}")
    print(f"    all pass: {report['criteria']['all_pass']}")
    print(f"    zh hybrid - BM25 at fixed weights: {report['criteria'][SWEEP_KEY]}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--recipe",
        type=Path,
        default=Path("configs/retriever-pairs.yaml"),
        help="the retriever recipe to run (as ragtune tune --recipe)",
    )
    p.add_argument("--set", action="append", default=[], help="override a recipe key: a.b=v")
    p.add_argument(
        "--sweep",
        type=float,
        nargs="*",
        default=[],
        help="fixed dense weights of weighted fusion to report beside the hybrid defaults",
    )
    p.add_argument("--label", default="acceptance", help="names the run and its results file")
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--work", type=Path, default=Path("data/retriever-tune"))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    args.sweep = tuple(args.sweep)
    if args.out is None:
        args.out = Path(__file__).parent / "results" / f"retriever_tune_{args.label}.json"
    return args


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args()
    run_dir = args.work / args.label
    zh_data, en_data = load_dataset("zh", args.data), load_dataset("en", args.data)
    base = load_embedder(EMBEDDER)
    zh: dict[str, Any] = {}
    en: dict[str, Any] = {}
    r = fresh_index(zh_data, args.work, run_dir, base)
    try:
        zh["before"] = measure_before(r, zh_data, args.work, ZH_MODES, args.sweep)
        tuned, training, pair_stats = tune(r, run_dir, args)
        log.info("trained in %.0fs; re-embedding %s", training["train_seconds"], zh_data.name)
        t0 = time.perf_counter()
        r.reindex(tuned, progress=progress)
        zh["reindex_seconds"] = round(time.perf_counter() - t0, 1)
        zh["after"] = measure(r, zh_data, ZH_MODES, args.sweep)
    finally:
        r.close()
    r = fresh_index(en_data, args.work, run_dir, base)
    try:
        en["before"] = measure_before(r, en_data, args.work, EN_MODES, args.sweep)
        r.reindex(tuned, progress=progress)
        en["after"] = measure(r, en_data, EN_MODES, args.sweep)
    finally:
        r.close()
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report = {
        "label": args.label,
        "embedder": EMBEDDER,
        "settings": settings,
        "pairs": pair_stats,
        "training": training,
        "zh": zh,
        "en": en,
        "criteria": verdict(zh, en),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=float) + "\n")
    print_table(report)


if __name__ == "__main__":
    main()

"""Does int4 serving answer as well as fp32? The eval harness on the Debian FAQ en questions at
both precisions, the same greedy decoding, then answer by answer.

Runs ``ragtune eval`` twice on the same dataset, modes and adapter (``--adapter``: a LoRA for ft
and hybrid), once with ``RAGTUNE_GENERATOR_PRECISION=fp32`` and once with ``int4``, and compares
the two runs' answers per mode:

- greedy token agreement: each answer tokenised, the share of positions (over the longer
  answer) holding the same token, and the share of answers identical word for word;
- token F1 against the gold answers: each precision's mean, and the paired bootstrap interval of
  int4 - fp32 over the questions (``eval.stats.paired``, the harness's own);
- the forgetting probe (``tuner.probe``) of the base model and of the adapter, scored on the
  serving model at each precision, and the probe's own comparison of fp32 against int4.

Writes benchmarks/results/quant_quality.json.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/quant_quality.py \\
        --data-dir data/bench16 --adapter raft-hybrid-v1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PRECISIONS = ("fp32", "int4")


def run_eval(args: argparse.Namespace, precision: str) -> Path:
    out = args.data_dir / "evals" / f"quant-{precision}"
    if (out / "results.jsonl").is_file() and not args.again:
        print(f"{precision}: reusing {out}", flush=True)
        return out
    env = {
        **os.environ,
        "RAGTUNE_DATA_DIR": str(args.data_dir),
        "RAGTUNE_GENERATOR_PRECISION": precision,
    }
    cmd = [
        str(Path(sys.executable).parent / "ragtune"),
        "eval",
        "--dataset",
        str(args.dataset),
        "--modes",
        args.modes,
        "--out",
        str(out),
        "--no-probes",
        "--max-new-tokens",
        str(args.max_new_tokens),
    ]
    if args.adapter:
        cmd += ["--ft-adapter", args.adapter, "--hybrid-adapter", args.adapter]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    print(f"{precision}: {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, env=env, check=True)
    return out


def rows_by_mode(run: Path) -> dict[str, dict[str, dict]]:
    found: dict[str, dict[str, dict]] = {}
    for line in (run / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        found.setdefault(row["mode"], {})[row["query_id"]] = row
    return found


def agreement(tokenizer: Any, a: str, b: str) -> tuple[int, int]:
    """(positions holding the same token, positions in the longer answer)."""
    ta = tokenizer(a, add_special_tokens=False)["input_ids"]
    tb = tokenizer(b, add_special_tokens=False)["input_ids"]
    same = sum(1 for x, y in zip(ta, tb, strict=False) if x == y)
    return same, max(len(ta), len(tb), 1)


def compare_runs(runs: dict[str, Path], tokenizer: Any, resamples: int) -> dict[str, Any]:
    from eval.stats import paired, resample_indices

    fp32, int4 = rows_by_mode(runs["fp32"]), rows_by_mode(runs["int4"])
    out: dict[str, Any] = {}
    for mode, rows in fp32.items():
        ids = [q for q in rows if q in int4.get(mode, {})]
        same = total = identical = 0
        for q in ids:
            s, t = agreement(tokenizer, rows[q]["prediction"], int4[mode][q]["prediction"])
            same, total = same + s, total + t
            identical += rows[q]["prediction"] == int4[mode][q]["prediction"]
        a = [rows[q]["metrics"].get("token_f1") for q in ids]
        b = [int4[mode][q]["metrics"].get("token_f1") for q in ids]
        diff = paired(a, b, resample_indices(len(ids), resamples, 0))
        present = [x for x in a if x is not None], [x for x in b if x is not None]
        out[mode] = {
            "questions": len(ids),
            "token_agreement": round(same / max(total, 1), 3),
            "identical_answers": round(identical / max(len(ids), 1), 3),
            "token_f1_fp32": round(sum(present[0]) / max(len(present[0]), 1), 4),
            "token_f1_int4": round(sum(present[1]) / max(len(present[1]), 1), 4),
            "token_f1_int4_minus_fp32": diff,
        }
    return out


def probes(args: argparse.Namespace) -> dict[str, Any]:
    """The forgetting probe of the base model and the adapter on the serving model at each
    precision, and the probe's comparison of fp32 against int4 for each. The probe's loss reads
    whole answers at once, which int4 serving multiplies by the float32 weights (as a prefill);
    ``int4-everywhere`` scores it with every call on the int4 weights."""
    from peft import PeftModel

    from service.generation import quant
    from service.loading import generator_from_settings
    from service.settings import Settings
    from tuner.probe import compare, score

    scores: dict[str, dict[str, Any]] = {}
    rows = quant.INT4_MAX_ROWS
    for precision in (*PRECISIONS, "int4-everywhere"):
        gen = generator_from_settings(Settings(data_dir=args.data_dir, auth_disabled=True))
        quant.quantise_for_serving(gen.model, precision.split("-")[0])
        quant.INT4_MAX_ROWS = 1 << 30 if precision == "int4-everywhere" else rows
        scores[precision] = {"base": score(gen.model, gen.tokenizer)}
        if args.adapter:
            folder = args.data_dir / "adapters" / args.adapter
            tuned = PeftModel.from_pretrained(gen.model, str(folder))
            scores[precision]["adapter"] = score(tuned, gen.tokenizer)
        print(f"probe {precision}: {json.dumps(scores[precision])}", flush=True)
    quant.INT4_MAX_ROWS = rows
    return {
        "scores": scores,
        "vs_fp32": {
            precision: {who: compare(scores["fp32"][who], scores[precision][who]) for who in found}
            for precision, found in scores.items()
            if precision != "fp32"
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--dataset", type=Path, default=ROOT / "data" / "debian-faq-en")
    parser.add_argument("--adapter", help="registry id of a LoRA for ft and hybrid")
    parser.add_argument("--modes", default="base,rag,ft,hybrid")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--again", action="store_true", help="rerun evals already on disk")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "quant_quality.json"
    )
    args = parser.parse_args()
    runs = {p: run_eval(args, p) for p in PRECISIONS}
    from transformers import AutoTokenizer

    from service.loading import generator_from_settings
    from service.settings import Settings

    gen = generator_from_settings(Settings(data_dir=args.data_dir, auth_disabled=True))
    folder = gen.weights_dir
    tokenizer = AutoTokenizer.from_pretrained(folder)
    report = {
        "dataset": args.dataset.name,
        "adapter": args.adapter,
        "max_new_tokens": args.max_new_tokens,
        "modes": compare_runs(runs, tokenizer, args.resamples),
        "forgetting_probe": probes(args),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["modes"], indent=1))


if __name__ == "__main__":
    main()

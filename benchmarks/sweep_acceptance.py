"""Acceptance of hyperparameter sweeps: an 8-trial sweep of the RAFT hybrid recipe
(``configs/raft-hybrid-sweep.yaml``) on 2 cores, then the best trial's adapter against the
recipe's own (the baseline trial) on the Debian FAQ en, paired over its 147 questions.

Phases (each one's output is kept under ``--data-dir``; a rerun skips what is done):

1. sweep: ``ragtune tune --recipe configs/raft-hybrid-sweep.yaml --sweep`` in the data dir (it
   needs the Debian documents indexed there: ``--seed-from`` copies an index and the converted
   models from another data dir). A killed run resumes when this script runs again; the time
   the sweep spent is its own count across runs (``spent_s``).
2. eval: ``ragtune eval --modes hybrid`` of the baseline's adapter and of the best's, each
   on all FAQ questions (64 greedy tokens, k 3, no probes), then the paired bootstrap of each
   answer metric (best - baseline, 10,000 resamples).

Writes benchmarks/results/sweep_acceptance.json and .md.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/sweep_acceptance.py \\
        --data-dir data/bench18 --seed-from data/bench16
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RAGTUNE = str(Path(sys.executable).parent / "ragtune")
METRICS = ("token_f1", "rouge_l", "groundedness", "citation_precision", "valid_marker")


def env(args: argparse.Namespace) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "RAGTUNE_DATA_DIR": str(args.data_dir)}


def seed(args: argparse.Namespace) -> None:
    if args.seed_from is None or (args.data_dir / "index").is_dir():
        return
    args.data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(args.seed_from / "index", args.data_dir / "index")
    (args.data_dir / "models").symlink_to((args.seed_from / "models").resolve())


def sweep(args: argparse.Namespace) -> dict[str, Any]:
    from tuner.config import load_recipe
    from tuner.sweep import sweep_id

    recipe = load_recipe(args.recipe)
    from service.settings import Settings

    recipe.base_model = recipe.base_model or Settings(data_dir=args.data_dir).generator
    folder = args.data_dir / "sweeps" / sweep_id(recipe)
    done = folder / "sweep.json"
    if not done.is_file() or json.loads(done.read_text())["state"] != "succeeded":
        log = args.data_dir / "sweep.log"
        with log.open("a") as f:
            code = subprocess.call(
                [RAGTUNE, "tune", "--recipe", str(args.recipe), "--sweep"],
                env=env(args),
                stdout=f,
                stderr=subprocess.STDOUT,
            )
        if code:
            raise SystemExit(f"the sweep failed; see {log}")
    return dict(json.loads(done.read_text()))


def evaluate(args: argparse.Namespace, adapter: str) -> Path:
    out = args.data_dir / "evals" / f"faq-hybrid-{adapter}"
    if not (out / "results.jsonl").is_file():
        cmd = [
            RAGTUNE,
            "eval",
            "--dataset",
            str(args.faq),
            "--modes",
            "hybrid",
            "--hybrid-adapter",
            adapter,
            "--no-probes",
            "--max-new-tokens",
            "64",
            "--out",
            str(out),
        ]
        with (args.data_dir / f"eval-{adapter}.log").open("w") as f:
            if subprocess.call(cmd, env=env(args), stdout=f, stderr=subprocess.STDOUT):
                raise SystemExit(f"ragtune eval of {adapter} failed")
    return out


def compare(base: Path, best: Path, seed_: int) -> dict[str, Any]:
    from eval import stats

    def rows(path: Path) -> dict[str, dict[str, Any]]:
        got = [json.loads(line) for line in (path / "results.jsonl").read_text().splitlines()]
        return {r["query_id"]: r for r in got if r["mode"] == "hybrid"}

    a, b = rows(base), rows(best)
    ids = sorted(set(a) & set(b))
    draws = stats.resample_indices(len(ids), 10_000, seed_)
    out: dict[str, Any] = {"questions": len(ids)}
    for metric in METRICS:
        sa = [a[i]["metrics"].get(metric) for i in ids]
        sb = [b[i]["metrics"].get(metric) for i in ids]
        out[metric] = {
            "baseline": _mean(sa),
            "best": _mean(sb),
            "best_minus_baseline": stats.paired(sa, sb, draws),
        }
    return out


def _mean(values: list[Any]) -> float | None:
    got = [v for v in values if v is not None]
    return round(sum(got) / len(got), 4) if got else None


def markdown(report: dict[str, Any]) -> str:
    s = report["sweep"]
    lines = [
        "# Sweep acceptance: configs/raft-hybrid-sweep.yaml on the Debian FAQ en",
        "",
        f"`{report['command']}`",
        "",
        f"{len(s['trials'])} trials in {s['spent_s']:.0f} s of sweep time "
        f"({s['spent_s'] / 60:.1f} min, 2 cores); objective {s['objective']}.",
        "",
        "| trial | state | val loss | "
        + " | ".join(k.split(".")[-1] for k in s["space"])
        + " | s |",
        "|---|---|---|" + "---|" * len(s["space"]) + "---|",
    ]
    for t in s["trials"]:
        values = " | ".join(_fmt(t["params"].get(k)) for k in s["space"])
        mark = " (baseline)" if t["baseline"] else ""
        lines.append(
            f"| {t['number']}{mark} | {t['state']} | {_fmt(t['value'])} | {values} | "
            f"{_fmt(t['seconds'])} |"
        )
    cmp_ = report.get("eval")
    if cmp_:
        lines += [
            "",
            f"Best (trial {s['best']['number']}, {s['best']['adapter']}) against the recipe's "
            f"own values (trial {s['baseline']['number']}, {s['baseline']['adapter']}), hybrid, "
            f"{cmp_['questions']} questions, paired bootstrap 95%:",
            "",
            "| metric | baseline | best | best - baseline [95%] |",
            "|---|---|---|---|",
        ]
        for m in METRICS:
            d = cmp_[m]["best_minus_baseline"] or {}
            ci = f"{_fmt(d.get('mean_diff'))} [{_fmt(d.get('ci_low'))}, {_fmt(d.get('ci_high'))}]"
            lines.append(f"| {m} | {_fmt(cmp_[m]['baseline'])} | {_fmt(cmp_[m]['best'])} | {ci} |")
    return "\n".join(lines) + "\n"


def _short(key: str) -> str:
    return key.split(".")[-1]


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return "-" if x is None else str(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data" / "bench18")
    parser.add_argument("--seed-from", type=Path, help="a data dir whose index and models to use")
    parser.add_argument("--recipe", type=Path, default=ROOT / "configs" / "raft-hybrid-sweep.yaml")
    parser.add_argument("--faq", type=Path, default=ROOT / "data" / "debian-faq-en")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    args.data_dir = args.data_dir.resolve()
    seed(args)
    started = time.perf_counter()
    summary = sweep(args)
    report: dict[str, Any] = {
        "command": "HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/sweep_acceptance.py "
        "--data-dir data/bench18 --seed-from data/bench16",
        "sweep": summary,
    }
    best, base = summary["best"], summary["baseline"]
    if best and base and base.get("adapter"):
        if best["number"] == base["number"]:
            report["eval"] = None
            report["note"] = "the recipe's own values were the best trial"
        else:
            report["eval"] = compare(
                evaluate(args, base["adapter"]), evaluate(args, best["adapter"]), args.seed
            )
    report["wall_seconds_this_run"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep_acceptance.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "sweep_acceptance.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()

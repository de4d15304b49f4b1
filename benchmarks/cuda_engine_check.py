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

from service.engine import Engine  # noqa: E402
from service.generate import complete  # noqa: E402
from tests.helpers import build_tiny_llama  # noqa: E402
from tuner.models import load_generator  # noqa: E402

PROMPTS = ["what is debian ?", "how to install a package with apt on debian ?", "kernel",
           "who is the user of the system and what is the file ?"]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        gen = load_generator(str(build_tiny_llama(Path(tmp) / "t")), cache_dir=Path(tmp),
                             device="cuda")
        msgs = [[{"role": "user", "content": p}] for p in PROMPTS]
        expected = [complete(gen, m, 12).text for m in msgs]
        engine = Engine(gen, max_batch=16)
        got = [j.wait(120).text.strip() for j in [engine.submit(m, 12) for m in msgs]]
        print("batched == generate on cuda:", got == expected)
        for bs in (1, 16):
            t0 = time.perf_counter()
            jobs = [engine.submit(msgs[i % 4], 64) for i in range(bs)]
            n = sum(len(j.wait(120).tokens) for j in jobs)
            print(f"batch {bs}: {n / (time.perf_counter() - t0):.0f} tokens/s")
        engine.close()
    print(torch.cuda.get_device_name(0), torch.__version__)


if __name__ == "__main__":
    main()

"""Device check: the generator path on CUDA (device=cuda loads there in float32 and generates).

Run on a machine with a GPU; uses the tiny Llama from the tests so no weights need to travel.

    python3 benchmarks/cuda_check.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from service.generation.reference import complete  # noqa: E402
from tests.helpers import build_tiny_llama  # noqa: E402
from tuner.models import load_generator, pick_device  # noqa: E402


def main() -> None:
    assert torch.cuda.is_available(), "no CUDA device here"
    assert pick_device("auto") == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_llama(Path(tmp) / "tiny")
        gen = load_generator(str(folder), cache_dir=Path(tmp) / "cache", device="cuda")
        param = next(gen.model.parameters())
        assert param.device.type == "cuda" and param.dtype == torch.float32, param
        messages = [{"role": "user", "content": "what is debian ?"}]
        t0 = time.perf_counter()
        out = complete(gen, messages, max_new_tokens=16)
        elapsed = time.perf_counter() - t0
        cpu = load_generator(str(folder), cache_dir=Path(tmp) / "cache", device="cpu")
        same = complete(cpu, messages, max_new_tokens=16).text == out.text
    print(f"device={torch.cuda.get_device_name(0)} torch={torch.__version__}")
    print(
        f"generated {out.completion_tokens} tokens on cuda in {elapsed:.3f}s; "
        f"greedy text equals CPU's: {same}"
    )


if __name__ == "__main__":
    main()

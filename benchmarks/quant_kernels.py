"""Quantised linear layers on the CPU, measured on the default generator (issue 16, first step).

SmolLM2-135M-Instruct's linear layers (all but the output head, tied to the embeddings) are
swapped for PyTorch's own CPU kernels for weight-only int8 (``_weight_int8pack_mm``, one scale per
output row) and int4 (``_weight_int4pack_mm_for_cpu``, asymmetric, groups of 32 inputs), and for
fbgemm's dynamic int8 (``torch.ao.quantization.quantize_dynamic``: int8 weights, activations
quantised per call), against float32. Each variant decodes the same chat prompts greedily with the
Hugging Face KV cache at batch 1 and 16, the variants' order rotated over rounds (medians), and
its greedy tokens are compared position by position with float32's (one early difference makes
every later position differ, so this is a strict measure). Writes
benchmarks/results/quant_kernels.json.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/quant_kernels.py --rounds 3 --new-tokens 32
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

PROMPTS = [
    "How do I install a package on Debian?",
    "What is the difference between apt and dpkg?",
    "How can I find which package owns a file?",
    "Explain what a Debian mirror is.",
]


class Int8Linear(torch.nn.Module):
    """y = x W^T + b with W int8, one float scale per output row."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()  # (out, in)
        scales = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        self.register_buffer(
            "qweight", (w / scales[:, None]).round().clamp(-127, 127).to(torch.int8)
        )
        self.register_buffer("scales", scales)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, shape[-1]), self.qweight, self.scales)
        y = y.reshape(*shape[:-1], -1)
        return y + self.bias if self.bias is not None else y


class Int4Linear(torch.nn.Module):
    """y = x W^T + b with W in int4, asymmetric, groups of ``group`` inputs (PyTorch's packing)."""

    def __init__(self, linear: torch.nn.Linear, group: int = 32) -> None:
        super().__init__()
        w = linear.weight.detach().float()  # (out, in)
        out_f, in_f = w.shape
        g = w.reshape(out_f, in_f // group, group)
        lo, hi = g.amin(-1), g.amax(-1)
        scale = ((hi - lo) / 15).clamp(min=1e-8)  # (out, groups)
        zero = lo + scale * 8  # the int4 kernel reads q in [0, 15] with 8 as the midpoint
        q = ((g - lo[..., None]) / scale[..., None]).round().clamp(0, 15).to(torch.int32)
        q = q.reshape(out_f, in_f)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        self.register_buffer("packed", packed)
        sz = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()  # (groups, out, 2)
        self.register_buffer("scales_zeros", sz)
        self.group, self.bias, self.out_features = group, linear.bias, out_f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.reshape(-1, shape[-1]), self.packed, self.group, self.scales_zeros
        )
        y = y.reshape(*shape[:-1], self.out_features)
        return y + self.bias if self.bias is not None else y


def quantised(model: torch.nn.Module, kind: str) -> torch.nn.Module:
    """A copy of ``model`` with every linear layer but the tied output head replaced."""
    model = copy.deepcopy(model)
    if kind == "dynamic-int8":  # fbgemm: int8 weights and activations quantised per batch
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear) and child_name != "lm_head":  # tied to embeddings
                setattr(
                    module, child_name, Int8Linear(child) if kind == "int8" else Int4Linear(child)
                )
    return model


def decode(model, tokenizer, batch: int, new_tokens: int) -> tuple[float, torch.Tensor]:
    texts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    chats = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True
        )
        for t in texts
    ]
    enc = tokenizer(chats, return_tensors="pt", padding=True)
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            **enc,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    seconds = time.perf_counter() - started
    return batch * new_tokens / seconds, out[:, enc["input_ids"].shape[1] :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "quant_kernels.json"
    )
    args = parser.parse_args()
    from retriever import threads  # noqa: F401  (passive OpenMP waiting, as the service runs)
    from tuner.models import load_generator

    gen = load_generator(cache_dir=Path("data") / "models")
    tokenizer = gen.tokenizer
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    base = gen.model.eval()
    kinds = ("int8", "int4", "dynamic-int8")
    variants = {"fp32": base, **{kind: quantised(base, kind) for kind in kinds}}
    report: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(), "batches": {}}
    for batch in args.batches:
        rates: dict[str, list[float]] = {v: [] for v in variants}
        tokens: dict[str, torch.Tensor] = {}
        for r in range(args.rounds):
            order = list(variants)
            for name in order[r % len(order) :] + order[: r % len(order)]:
                rate, out = decode(variants[name], tokenizer, batch, args.new_tokens)
                rates[name].append(rate)
                tokens[name] = out
                print(f"batch {batch} {name}: {rate:.1f} tokens/s", flush=True)
        ref = tokens["fp32"]
        report["batches"][str(batch)] = {
            name: {
                "tokens_per_s": round(statistics.median(v), 1),
                "vs_fp32": round(statistics.median(v) / statistics.median(rates["fp32"]), 2),
                "greedy_token_agreement": round(float((tokens[name] == ref).float().mean()), 3),
            }
            for name, v in rates.items()
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["batches"], indent=1))


if __name__ == "__main__":
    main()

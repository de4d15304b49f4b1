"""Serving the generator's linear layers from 4-bit weights on the CPU.

Decoding a small model on a CPU is bound by reading its weights: float32 reads 4 bytes per
weight per step. ``quantise_for_serving`` gives every linear layer of the base model a copy of its
weight in PyTorch's own int4 CPU layout (asymmetric, one scale and zero per group of 32 inputs,
``aten._weight_int4pack_mm_for_cpu``) and decodes from it; the float32 weight stays where it was,
for what needs it whole.

Why int4 with bfloat16 activations, measured on SmolLM2-135M (``benchmarks/quant_kernels.py``):

- PyTorch's weight-only int8 kernel (``_weight_int8pack_mm``) takes no fast path here: 0.42x
  float32 at one row, 0.09x at 16.
- fbgemm's dynamic int8 (``quantize_dynamic``) is 1.55x but quantises the activations too: greedy
  tokens agree with float32's at 0.28 of positions (0.51 with one activation scale per row).
- The int4 kernel is fast only with bfloat16 inputs (float32 inputs take a slow path): 2.5-3x
  float32 for 1 to 4 rows, 1.4x at 16, about even at 32 and slower beyond. So decode steps (one
  new token per row, up to the engine's batch) read the int4 copy, and a prompt's prefill (many
  tokens per row) multiplies the float32 weight instead.
- The packaged model is a Q4_1 GGUF: its linear weights are groups of 32 on a 16-level grid, so
  the int4 copy holds each weight's 4-bit code exactly; the group's scale and zero are kept in
  bfloat16, as the kernel wants them, which rounds them (the GGUF's are float16). With the
  bfloat16 activations that is all that differs from float32: 0.94 of greedy positions agree.
  For weights of any other origin it is the usual round-to-nearest int4.

The output head (tied to the embeddings, Q8_0 in the GGUF, a fifth of the model's bytes) is read
the same way, but a few hundredths of a logit decide a greedy token: ``RescoredHead`` takes the
int4 head's best ``RESCORE`` candidates and gives them their exact float32 logits, so a greedy
token is float32's whenever float32's best is among them.

Adapters stay in their own precision: a quantised layer is still an ``nn.Linear`` with its
float32 weight (PEFT wraps it, LoRA and IA3 add or scale around its output, DoRA reads the
weight for its norm). Training never sees these layers: they exist only in a serving model,
and a call that wants gradients takes the float32 weight. The int4 copy is made once: a serving
model's float32 weights must not change in place afterwards (nothing in the service merges).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "int4")
GROUP = 32  # inputs per scale and zero
INT4_MAX_ROWS = 32  # a 2-d input of more rows multiplies the float32 weight
RESCORE = 64  # head candidates given their exact logit


def int4_available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")


def fits_int4(linear: nn.Linear) -> bool:
    return linear.in_features % GROUP == 0 and linear.out_features % 8 == 0


def pack_int4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` (out, in) as the int4 kernel reads it: the packed 4-bit values and, per group
    of ``GROUP`` inputs, (scale, zero) in bfloat16, with w = (q - 8) * scale + zero."""
    w = weight.detach().float()
    out_f, in_f = w.shape
    groups = w.reshape(out_f, in_f // GROUP, GROUP)
    lo, hi = groups.amin(-1), groups.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=torch.finfo(torch.float32).tiny)
    q = ((groups - lo[..., None]) / scale[..., None]).round().clamp(0, 15).to(torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.reshape(out_f, in_f), 1)
    zero = lo + 8 * scale
    scales_zeros = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()
    return packed, scales_zeros.to(torch.bfloat16)


class Int4Linear(nn.Linear):
    """An ``nn.Linear`` (same weight and bias objects) that decodes from an int4 copy."""

    def __init__(self, linear: nn.Linear) -> None:
        nn.Module.__init__(self)
        self.train(linear.training)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        packed, scales_zeros = pack_int4(linear.weight)
        self.register_buffer("int4_weight", packed, persistent=False)
        self.register_buffer("int4_scales_zeros", scales_zeros, persistent=False)

    def int4(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            rows, self.int4_weight, GROUP, self.int4_scales_zeros
        )
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def exact(self, x: torch.Tensor) -> bool:
        """Whether this call multiplies by the float32 weight: anything but a decode step
        (one new token per row; a 2-d input counts each row as one), another dtype, or
        gradients wanted (the int4 kernel has no derivative). Deciding per step, not per
        call size, keeps a request's tokens the same whatever shares its batch."""
        step = x.shape[-2] == 1 if x.dim() >= 3 else x.shape[0] <= INT4_MAX_ROWS
        return not step or x.dtype != torch.float32 or torch.is_grad_enabled()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.exact(x):
            return F.linear(x, self.weight, self.bias)
        y = self.int4(x)
        return y + self.bias if self.bias is not None else y


class RescoredHead(Int4Linear):
    """The output head: int4 logits, with the best ``RESCORE`` of each row made exact."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.exact(x):
            return F.linear(x, self.weight, self.bias)
        logits = self.int4(x)
        if self.bias is not None:
            logits = logits + self.bias
        flat = logits.reshape(-1, self.out_features)
        rows = x.reshape(-1, self.in_features)
        top = flat.topk(min(RESCORE, self.out_features), dim=-1).indices  # (rows, k)
        exact = torch.einsum("rd,rkd->rk", rows, self.weight[top])
        if self.bias is not None:
            exact = exact + self.bias[top]
        flat.scatter_(1, top, exact)
        return logits


def quantise_for_serving(model: Any, precision: str) -> int:
    """Give ``model``'s linear layers their serving precision, in place; returns how many were
    quantised. ``fp32`` changes nothing. Only base layers are touched: an adapter's own layers
    (inside a PEFT tuner layer) keep theirs. Layers the kernel cannot take (sizes not multiples
    of the group) stay float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return 0
    if not int4_available():
        raise RuntimeError("int4 serving needs torch's int4 CPU kernel (torch >= 2.6)")
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("int4 serving is for the CPU; on a GPU serve fp32 (or train qlora)")
    head = output_head(model)
    adapters = adapter_owned(model)  # an adapter's own layers and copies keep their precision
    done = 0
    for parent in list(model.modules()):
        if id(parent) in adapters and not is_tuner_layer(parent):
            continue  # inside an adapter; a tuner layer's base_layer is the base model's
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and fits_int4(child) and id(child) not in adapters:
                setattr(parent, name, RescoredHead(child) if child is head else Int4Linear(child))
                done += 1
    log.info("serving %d linear layers from int4 weights", done)
    return done


def output_head(model: Any) -> Any:
    get = getattr(model, "get_output_embeddings", None)
    try:
        return get() if callable(get) else None
    except (AttributeError, NotImplementedError):
        return None


def adapter_owned(model: Any) -> set[int]:
    """ids of the modules an adapter owns: a tuner layer itself and everything in it but its
    base layer (lora_A, lora_B, their dicts), and what a modules_to_save wrapper holds."""
    owned: set[int] = set()
    for module in model.modules():
        wrapper = is_tuner_layer(module) or type(module).__name__ == "ModulesToSaveWrapper"
        if not wrapper:
            continue
        base = getattr(module, "base_layer", None) if is_tuner_layer(module) else None
        keep = {id(m) for m in base.modules()} if base is not None else set()
        owned.update(id(m) for m in module.modules() if id(m) not in keep)
    return owned


def is_tuner_layer(module: Any) -> bool:
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # pragma: no cover - peft is a core dependency
        return False
    return isinstance(module, BaseTunerLayer)

"""A leaner forward for PEFT's LoRA layers while serving.

PEFT's ``lora.Linear.forward`` checks its arguments, builds a dict of variant options and calls
three modules (dropout, ``lora_A``, ``lora_B``) for every layer and every step. For a small
model on a CPU that bookkeeping costs as much as the arithmetic: with a rank-16 LoRA on all 210
linear layers of SmolLM2-135M, one int4 decode step took 41 ms instead of 24.5 ms without the
adapter. ``lean_forward`` computes the same sum, ``base(x) + B(A(x)) * scaling`` per active
adapter, in two matrix products and one in-place add, and hands every other case to PEFT's own
forward: training, gradients, dropout in training mode, merged or disabled adapters, DoRA and the
other LoRA variants, per-row adapter names, extra arguments.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

MARK = "_ragtune_lean"


def make_lean(model: Any) -> int:
    """Give every PEFT LoRA ``Linear`` layer of ``model`` the lean forward (once per layer);
    returns how many layers got it now."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # pragma: no cover - peft is a core dependency
        return 0
    done = 0
    for module in model.modules():
        if type(module) is LoraLinear and not getattr(module, MARK, False):
            module.forward = lean_forward(module, module.forward)  # type: ignore[method-assign]
            setattr(module, MARK, True)
            done += 1
    return done


def lean_forward(layer: Any, peft_forward: Any) -> Any:
    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args or kwargs or layer.training or torch.is_grad_enabled():
            return peft_forward(x, *args, **kwargs)
        if layer.disable_adapters or layer.merged:
            return peft_forward(x)
        active = [a for a in layer.active_adapters if a in layer.lora_A]
        if any(a in layer.lora_variant for a in active):
            return peft_forward(x)
        result = layer.base_layer(x)
        dtype = result.dtype
        for name in active:
            down, up = layer.lora_A[name], layer.lora_B[name]
            delta = F.linear(F.linear(x.to(down.weight.dtype), down.weight, down.bias), up.weight)
            if up.bias is not None:  # lora_bias
                delta = delta + up.bias
            result = result.to(delta.dtype).add_(delta, alpha=layer.scaling[name])
        return result.to(dtype)

    return forward

"""PEFT methods by name: the config each one needs, applied to a base model.

``lora``, ``dora``, ``ia3``, ``prefix_tuning``, ``prompt_tuning``, ``p_tuning`` wrap the model
with peft; ``full`` trains every weight; ``qlora`` needs a CUDA GPU and bitsandbytes and is
refused clearly without them. Knows nothing of data or training loops.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from tuner.config import Hyperparameters

PEFT_METHODS = ("lora", "dora", "ia3", "prefix_tuning", "prompt_tuning", "p_tuning", "qlora")


class MethodUnavailable(RuntimeError):
    """The method cannot run on this machine (e.g. qlora without a GPU)."""


def check_available(method: str) -> None:
    if method != "qlora":
        return
    import torch

    if not torch.cuda.is_available():
        raise MethodUnavailable(
            "qlora needs a CUDA GPU (4-bit weights via bitsandbytes); none is visible here: "
            "use method lora, which trains the same adapter in full precision"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MethodUnavailable("qlora needs bitsandbytes: pip install bitsandbytes")


def peft_config(method: str, hp: Hyperparameters) -> Any:
    """The peft config for ``method`` with the recipe's hyperparameters."""
    import peft

    targets = hp.target_modules
    if method in ("lora", "dora", "qlora"):
        return peft.LoraConfig(
            task_type=peft.TaskType.CAUSAL_LM,
            r=hp.rank,
            lora_alpha=hp.alpha,
            lora_dropout=hp.dropout,
            target_modules=targets if targets is not None else "all-linear",
            use_dora=method == "dora",
        )
    if method == "ia3":
        return peft.IA3Config(task_type=peft.TaskType.CAUSAL_LM, target_modules=targets)
    if method == "prefix_tuning":
        return peft.PrefixTuningConfig(
            task_type=peft.TaskType.CAUSAL_LM, num_virtual_tokens=hp.num_virtual_tokens
        )
    if method == "prompt_tuning":
        return peft.PromptTuningConfig(
            task_type=peft.TaskType.CAUSAL_LM, num_virtual_tokens=hp.num_virtual_tokens
        )
    if method == "p_tuning":
        return peft.PromptEncoderConfig(
            task_type=peft.TaskType.CAUSAL_LM,
            num_virtual_tokens=hp.num_virtual_tokens,
            encoder_hidden_size=128,
        )
    raise ValueError(f"method: unknown peft method {method!r}; one of {PEFT_METHODS} or full")


def load_base(
    source: str, *, cache_dir: Path, device: str, method: str, local_path: str | None = None
) -> Any:
    """The base generator for training: float32 on CPU; qlora loads 4-bit on the GPU."""
    from tuner.models import load_generator

    check_available(method)
    if method != "qlora":
        return load_generator(source, cache_dir=cache_dir, device=device, local_path=local_path)
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    gen = load_generator(source, cache_dir=cache_dir, device="cpu", local_path=local_path)
    gen.model = AutoModelForCausalLM.from_pretrained(
        gen.weights_dir,
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        ),
        device_map={"": 0},
        trust_remote_code=False,
    )
    return gen


def wrap(model: Any, method: str, hp: Hyperparameters, parent: Path | None = None) -> Any:
    """``model`` ready to train with ``method``: a fresh adapter, or ``parent``'s adapter to
    continue from (sequential fine-tuning), or every weight for ``full``."""
    import peft

    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if method == "qlora":
        model = peft.prepare_model_for_kbit_training(model)
    if parent is not None:
        return peft.PeftModel.from_pretrained(model, str(parent), is_trainable=True)
    if getattr(model.config, "use_cache", None):
        model.config.use_cache = False  # no KV cache while training
    return peft.get_peft_model(model, peft_config(method, hp))


def trainable_state(model: Any) -> dict[str, Any]:
    """The weights being trained, by name (what a checkpoint needs)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: Any, state: dict[str, Any]) -> None:
    import torch

    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise ValueError(f"checkpoint names weights this model lacks: {missing[:3]}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def count_trainable(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())

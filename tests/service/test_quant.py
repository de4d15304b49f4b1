"""int4 serving weights (service.generation.quant): exact on a 4-bit grid, float32 for long
inputs, an exact head for the best candidates, and every PEFT method served on top in its own
precision."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from service.generation.quant import (
    GROUP,
    INT4_MAX_ROWS,
    RESCORE,
    Int4Linear,
    RescoredHead,
    quantise_for_serving,
)


def on_grid(out_f: int, in_f: int, seed: int = 0, exact_in_bf16: bool = False) -> torch.Tensor:
    """Weights as a Q4_1 file holds them: per group of 32 inputs, scale * q + min, q in 0..15,
    with some q = 0 and some q = 15 in every group (as the format's quantiser leaves them)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (out_f, in_f // GROUP, GROUP), generator=g).float()
    q[..., 0], q[..., 1] = 0, 15
    if exact_in_bf16:  # a power-of-two scale and a min on its grid: every weight fits bf16
        scale = torch.full((out_f, in_f // GROUP, 1), 2.0**-6)
        low = -8 * scale
    else:
        scale = torch.rand((out_f, in_f // GROUP, 1), generator=g) * 0.01 + 1e-3
        low = -torch.rand((out_f, in_f // GROUP, 1), generator=g) * 0.1
    return (q * scale + low).reshape(out_f, in_f)


def linear(weight: torch.Tensor, bias: bool = False) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer


def test_int4_holds_weights_on_a_4_bit_grid_exactly() -> None:
    weight = on_grid(64, 96, exact_in_bf16=True)
    layer = Int4Linear(linear(weight))
    eye = torch.eye(96)[:INT4_MAX_ROWS]  # each row reads out one input column's weights
    assert torch.equal(layer.int4(eye), weight.t()[:INT4_MAX_ROWS])


def test_int4_output_is_float32_up_to_bfloat16_activations_and_not_so_off_the_grid() -> None:
    x = torch.randn(4, 128)
    grid = on_grid(256, 128)
    exact = F.linear(x, grid)
    with torch.inference_mode():  # as the engine decodes
        got = Int4Linear(linear(grid))(x)
    assert got.dtype == torch.float32 and got.shape == (4, 256)
    err_grid = (got - exact).abs().max() / exact.abs().max()
    assert err_grid < 0.02
    noisy = grid + torch.randn_like(grid) * 0.002  # off the grid: int4 rounds it
    with torch.inference_mode():
        err_off = (Int4Linear(linear(noisy))(x) - F.linear(x, noisy)).abs().max()
    assert err_off / exact.abs().max() > 2 * err_grid


def test_a_long_input_is_multiplied_by_the_float32_weight_and_bias_is_kept() -> None:
    base = linear(torch.randn(64, 64), bias=True)
    layer = Int4Linear(base)
    assert layer.weight is base.weight and layer.bias is base.bias  # the same parameters
    long = torch.randn(INT4_MAX_ROWS + 1, 64)
    assert torch.equal(layer(long), F.linear(long, base.weight, base.bias))
    step = torch.randn(3, 1, 64)  # a decode step: one new token per row
    with torch.inference_mode():
        out = layer(step)
        prompt = torch.randn(2, 3, 64)  # a prefill: several tokens per row, however few in all
        assert torch.equal(layer(prompt), F.linear(prompt, base.weight, base.bias))
    assert out.shape == (3, 1, 64)
    rows = layer.int4(step.reshape(3, 64)).reshape(3, 1, 64)
    assert torch.equal(out, rows + base.bias)
    with torch.enable_grad():  # gradients wanted: the float32 weight, which has a derivative
        short = step.clone().requires_grad_()
        out = layer(short)
        assert torch.equal(out, F.linear(short, base.weight, base.bias))
        out.sum().backward()
    assert short.grad is not None


def test_the_head_gives_its_best_candidates_their_exact_logits() -> None:
    torch.manual_seed(1)
    weight = torch.randn(4096, 64)  # off any grid: the int4 logits alone are rough
    head = RescoredHead(linear(weight))
    x = torch.randn(5, 64)
    exact = F.linear(x, weight)
    with torch.inference_mode():
        got = head(x)
        rough = head.int4(x)
    assert not torch.allclose(rough, exact, atol=1e-3)
    assert torch.equal(got.argmax(-1), exact.argmax(-1))
    top = rough.topk(RESCORE, dim=-1).indices
    assert torch.allclose(got.gather(1, top), exact.gather(1, top), atol=1e-4)
    others = torch.ones_like(got, dtype=torch.bool).scatter_(1, top, False)
    assert torch.equal(got[others], rough[others])


def snap_to_grid(model: nn.Module) -> None:
    """Every linear weight onto a Q4_1 grid (the packaged GGUF's form), so int4 holds it."""
    with torch.no_grad():
        for module in model.modules():
            if type(module) is nn.Linear and module.in_features % GROUP == 0:
                w = module.weight.reshape(module.out_features, -1, GROUP)
                lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
                scale = ((hi - lo) / 15).clamp(min=1e-12)  # the padding row is all zeros
                snapped = ((w - lo) / scale).round() * scale + lo
                module.weight.copy_(snapped.reshape_as(module.weight))


@pytest.fixture(scope="module")
def grid_llama(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    snap_to_grid(model)
    out = tmp_path_factory.mktemp("grid-llama")
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(out)
    return out


def peft_configs() -> dict[str, Any]:
    import peft

    causal = peft.TaskType.CAUSAL_LM
    lora = {"task_type": causal, "r": 4, "lora_alpha": 32, "target_modules": "all-linear"}
    return {
        "lora": peft.LoraConfig(**lora, init_lora_weights=False),
        "dora": peft.LoraConfig(**lora, init_lora_weights=False, use_dora=True),
        "ia3": peft.IA3Config(task_type=causal, init_ia3_weights=False),
        "prefix_tuning": peft.PrefixTuningConfig(task_type=causal, num_virtual_tokens=4),
        "prompt_tuning": peft.PromptTuningConfig(task_type=causal, num_virtual_tokens=4),
        "p_tuning": peft.PromptEncoderConfig(
            task_type=causal, num_virtual_tokens=4, encoder_hidden_size=16
        ),
    }


def last_logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids).logits[0, -1].float()


@pytest.mark.parametrize("method", list(peft_configs()))
def test_every_peft_method_serves_on_int4_weights_in_its_own_precision(
    method: str, grid_llama: Path, tmp_path: Path
) -> None:
    """An adapter saved by PEFT, loaded onto an int4 base (the serving order: the engine
    quantises, adapters load later), changes the logits as it does on float32."""
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(2)
    get_peft_model(
        AutoModelForCausalLM.from_pretrained(grid_llama), peft_configs()[method]
    ).save_pretrained(tmp_path / method, safe_serialization=True)
    ids = torch.tensor([[1, 5, 9, 12, 14, 20, 2, 1, 24, 3]])

    fp32 = AutoModelForCausalLM.from_pretrained(grid_llama).eval()
    base_fp32 = last_logits(fp32, ids)
    tuned_fp32 = last_logits(PeftModel.from_pretrained(fp32, str(tmp_path / method)), ids)

    served = AutoModelForCausalLM.from_pretrained(grid_llama).eval()
    assert quantise_for_serving(served, "int4") == 14  # 7 per layer; the head's vocab is odd
    base_int4 = last_logits(served, ids)
    tuned = PeftModel.from_pretrained(served, str(tmp_path / method))
    tuned_int4 = last_logits(tuned, ids)

    shift = (tuned_fp32 - base_fp32).abs().max()
    assert shift > 1e-3  # the adapter does something
    assert (tuned_int4 - base_int4).abs().max() > shift / 2  # and does it on int4 too
    assert torch.allclose(tuned_int4, tuned_fp32, atol=0.05 * float(tuned_fp32.abs().max()))
    for name, module in tuned.named_modules():  # the adapter's own layers stayed float32
        if "lora_" in name and isinstance(module, nn.Linear):
            assert type(module) is nn.Linear, name


@pytest.mark.parametrize("rank", [8, 32])  # adapter layers the int4 kernel could take
def test_a_model_wrapped_by_peft_first_has_only_its_base_layers_quantised(
    rank: int, tiny_llama: Path
) -> None:
    import peft
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    config = peft.LoraConfig(
        task_type=peft.TaskType.CAUSAL_LM,
        r=rank,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        init_lora_weights=False,
        modules_to_save=["gate_proj"],
    )
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama), config)
    assert quantise_for_serving(model, "int4") == 12  # 4 wrapped + up, down; gate is saved
    saved = [m for n, m in model.named_modules() if "modules_to_save" in n]
    assert saved and all(type(m) is not Int4Linear for m in saved)
    kinds = {type(m).__name__ for n, m in model.named_modules() if n.endswith("base_layer")}
    assert kinds == {"Int4Linear"}
    assert all(
        type(m) is nn.Linear for n, m in model.named_modules() if ".lora_A." in n or ".lora_B." in n
    )
    assert quantise_for_serving(model, "int4") == 0  # a second call changes nothing


def test_fp32_changes_nothing_and_an_unknown_precision_is_refused(tiny_llama: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    assert quantise_for_serving(model, "fp32") == 0
    assert all(type(m) is not Int4Linear for m in model.modules())
    with pytest.raises(ValueError, match="precision must be one of fp32, int4"):
        quantise_for_serving(model, "int3")


def test_the_engine_serves_int4_with_per_request_adapters(
    grid_llama: Path, tiny_lora: Path, tmp_path: Path
) -> None:
    """Through the engine: int4 base answers, a LoRA request in the same engine answers
    differently, and float32's greedy answer on grid weights is int4's."""
    import shutil

    from service.adapters import AdapterSet
    from service.generation.engine import GenerationEngine
    from tuner.models import load_generator

    shutil.copytree(tiny_lora, tmp_path / "adapters" / "x")
    chat = [{"role": "user", "content": "what is the capital of france ?"}]
    answers = {}
    for precision in ("fp32", "int4"):
        gen = load_generator(str(grid_llama), cache_dir=tmp_path / "m")
        adapters = AdapterSet(gen, tmp_path / "adapters")
        engine = GenerationEngine(gen, max_batch=4, adapters=adapters, precision=precision)
        try:
            adapters.load("x")
            base = engine.submit(chat, 12)
            tuned = engine.submit(chat, 12, adapter="x")
            answers[precision] = (base.wait(60).tokens, tuned.wait(60).tokens)
        finally:
            engine.close()
        if precision == "int4":
            assert any(isinstance(m, Int4Linear) for m in gen.model.modules())
    assert answers["int4"][0] != answers["int4"][1]
    assert answers["int4"] == answers["fp32"]


@pytest.mark.parametrize("method", ["lora", "lora_bias", "dora"])
def test_the_lean_lora_forward_gives_peft_s_logits(
    method: str, tiny_llama: Path, tmp_path: Path
) -> None:
    """Serving's lean LoRA forward computes what PEFT's does (DoRA, a variant, is left to
    PEFT), on fp32 and on int4 base layers; with gradients on, PEFT's own forward runs."""
    import peft
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from service.generation.leanlora import MARK, make_lean

    config = peft_configs()["dora" if method == "dora" else "lora"]
    if method == "lora_bias":
        config = peft.LoraConfig(
            task_type=peft.TaskType.CAUSAL_LM,
            r=4,
            target_modules="all-linear",
            init_lora_weights=False,
            lora_bias=True,
        )
    torch.manual_seed(5)
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama), config).save_pretrained(
        tmp_path / "a", safe_serialization=True
    )
    ids = torch.tensor([[1, 5, 9, 12, 14, 20, 2, 1, 24, 3]])
    for precision in ("fp32", "int4"):
        base = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
        quantise_for_serving(base, precision)
        model = PeftModel.from_pretrained(base, str(tmp_path / "a"), is_trainable=True).eval()
        expected = last_logits(model, ids)
        assert make_lean(model) == 14
        assert make_lean(model) == 0  # once per layer
        assert all(
            getattr(m, MARK, False) for n, m in model.named_modules() if n.endswith("q_proj")
        )
        assert torch.allclose(last_logits(model, ids), expected, atol=1e-5)
        with torch.enable_grad():  # PEFT's own forward: gradients reach the adapter
            model(input_ids=ids).logits.sum().backward()
        grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
        assert grads and all(g is not None for g in grads)

"""Answer one chat with the generator: chat template in, greedy decoding, text out.

The simplest path through the generator: one plain ``generate`` call. The service answers
through the batching engine (``service.generation.engine``); this is the reference that the
model tests and the GPU checks compare against. It knows nothing of retrieval, batching or adapters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuner.models import Generator


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int


def complete(
    generator: Generator, messages: list[dict[str, str]], max_new_tokens: int = 128
) -> Completion:
    """Greedy completion of ``messages`` (OpenAI-style role/content dicts)."""
    import torch

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    tok = generator.tokenizer
    encoded: Any = tok.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    inputs = encoded.to(generator.model.device)
    prompt_len = inputs["input_ids"].shape[1]
    with torch.inference_mode():
        out = generator.model.generate(  # type: ignore[operator]
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
    new_tokens = out[0][prompt_len:]  # (completion_len,)
    text = str(tok.decode(new_tokens, skip_special_tokens=True)).strip()
    return Completion(
        text=text, prompt_tokens=prompt_len, completion_tokens=int(new_tokens.shape[0])
    )

"""Choosing each next token and ending a request: end-of-sequence ids, seeded generators,
greedy or temperature sampling, stop strings. Pure functions; knows nothing of batching."""

from __future__ import annotations

import time
from typing import Any


def eos_ids(model: Any, tok: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    return ids


def rng(seed: int | None) -> Any:
    import torch

    g = torch.Generator()
    g.manual_seed(seed if seed is not None else int(time.time_ns() % (2**31)))
    return g


def pick(logits: Any, temperature: float, generator: Any) -> Any:
    import torch

    if temperature <= 0:
        return logits.argmax()
    probs = torch.softmax(logits / temperature, dim=-1).cpu()
    return torch.multinomial(probs, 1, generator=generator)[0].to(logits.device)


def first_stop(text: str, stops: list[str], already: int) -> int | None:
    """Index where the earliest stop string starts, searching only where new text could match."""
    best = None
    for s in stops:
        if not s:
            continue
        at = text.find(s, max(0, already - len(s) + 1))
        if at >= 0 and (best is None or at < best):
            best = at
    return best

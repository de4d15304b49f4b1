"""Choosing each next token and ending a request: end-of-sequence ids, seeded generators,
greedy or temperature sampling, and one request's text as it is decoded and cut at a stop
string. Knows nothing of batching."""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Sequence
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


SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts


def rng(seed: int | None) -> Any:
    """A generator for one request's sampling; ValueError for a seed torch cannot take."""
    import torch

    low, high = SEED_RANGE
    if seed is not None and (isinstance(seed, bool) or not low <= seed <= high):
        raise ValueError(f"seed must be an integer in {low}..{high}, got {seed!r}")
    g = torch.Generator()
    g.manual_seed(seed if seed is not None else int(time.time_ns() % (2**31)))
    return g


GREEDY_BELOW = 1e-4  # a temperature under this samples as greedy (a smaller one overflows)


def pick(logits: Any, temperature: float, generator: Any) -> Any:
    import torch

    if temperature < GREEDY_BELOW:
        return logits.argmax()
    shifted = logits.float() - logits.float().max()  # the top logit 0: no inf, no NaN
    probs = torch.softmax(shifted / temperature, dim=-1).cpu()
    return torch.multinomial(probs, 1, generator=generator)[0].to(logits.device)


class TextStream:
    """One request's text, decoded from its tokens as they come and checked for its stop
    strings; text that could be the start of a stop string is held back until it is not.

    A token costs work in proportion to the tail only, never to the whole text: ``decode``
    sees the tokens since the last complete character (and the one before, for the spacing
    between them); stop strings are matched only where one could end in the new text, by
    looking up each distinct stop length in a set; the held-back tail is shorter than the
    longest stop. The text is the full decode's (the stop string and what follows excluded).
    """

    def __init__(self, decode: Callable[[list[int]], str], stops: Sequence[str]) -> None:
        self._decode = decode
        self._sorted = sorted({s for s in stops if s})
        self._by_len: dict[int, set[str]] = {}
        for s in self._sorted:
            self._by_len.setdefault(len(s), set()).add(s)
        self._firsts = {s[0] for s in self._sorted}
        self._longest = max(self._by_len, default=0)
        self._prefix_at = self._read_at = 0  # tokens[prefix_at:read_at] decoded last time
        self._held = ""

    def push(self, tokens: list[int]) -> tuple[str, bool]:
        """(text to show, stopped) once ``tokens`` (all so far, the last one new) are in.
        On a stop, the text up to the stop string; nothing more will come."""
        new = self._new_text(tokens)
        if not new:
            return "", False
        window = self._held + new
        hit = self._first_stop(window, len(self._held))
        if hit is not None:
            self._held = ""
            return window[:hit], True
        keep = self._partial_stop(window)
        self._held = window[len(window) - keep :]
        return window[: len(window) - keep], False

    def flush(self) -> str:
        """The held-back text, for a request that ends without its stop string."""
        out, self._held = self._held, ""
        return out

    def _new_text(self, tokens: list[int]) -> str:
        """The text the last tokens add; "" while they end inside a multi-byte character."""
        before = self._decode(tokens[self._prefix_at : self._read_at])
        text = self._decode(tokens[self._prefix_at :])
        if text.endswith("\ufffd") or len(text) <= len(before):
            return ""
        self._prefix_at, self._read_at = self._read_at, len(tokens)
        return text[len(before) :]

    def _first_stop(self, window: str, old: int) -> int | None:
        """Where the earliest stop string ending after ``window[:old]`` starts."""
        best = None
        for n, group in self._by_len.items():
            for end in range(max(old + 1, n), len(window) + 1):
                if best is not None and end - n >= best:
                    break
                if window[end - n : end] in group:
                    best = end - n
                    break
        return best

    def _partial_stop(self, window: str) -> int:
        """The length of the longest end of ``window`` that a stop string starts with."""
        for k in range(min(self._longest - 1, len(window)), 0, -1):
            tail = window[-k:]
            if tail[0] not in self._firsts:
                continue
            at = bisect.bisect_left(self._sorted, tail)
            if at < len(self._sorted) and self._sorted[at].startswith(tail):
                return k
        return 0

"""The token budget of one prompt: fitting retrieved passages into what the model can read.

The templated prompt (the chat template applied, counted with the engine's own
``encode_chat``, so the count is the ids the engine will prefill) must fit the per-request
budget (``Limits.max_prompt_tokens``), and the prompt plus the answer's ``max_new_tokens`` must
fit the model's context, less the positions a prompt-learning adapter (prefix, prompt or
p-tuning) puts in front of every prompt. Passages that do not fit are dropped, lowest-ranked
first; the first one that does not fit whole is cut short at a word boundary when some of it
fits. A cut passage keeps its start and its end moves back, so its span and text are exactly
what the prompt held.
When the prompt does not fit even with no passages, ``PromptTooLong`` carries the count.

Knows nothing of HTTP, of how passages are retrieved or how the prompt is worded: the caller
hands in a function from passages to the chat the model sees.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from retriever.index import Hit

Messages = list[dict[str, str]]
CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
WORD_END = re.compile(r"\S(?=\s|$)")


class PromptTooLong(ValueError):
    """The prompt, with no passages at all, is over the room it has."""

    def __init__(self, tokens: int, room: int) -> None:
        super().__init__(f"the prompt is {tokens} tokens; at most {room} fit")
        self.tokens, self.room = tokens, room


@dataclass(frozen=True)
class Budget:
    """How a prompt is counted and what bounds it."""

    encode: Callable[[Messages], list[int]]  # the engine's chat template + tokenizer
    max_prompt_tokens: int  # the per-request budget
    context: int | None = None  # the model's context in tokens; None: unknown
    reserved: int = 0  # context positions the adapter takes (its virtual tokens)

    def room(self, max_new_tokens: int) -> int:
        """Tokens the prompt may take next to an answer of ``max_new_tokens``."""
        if self.context is None:
            return self.max_prompt_tokens
        return min(self.max_prompt_tokens, self.context - self.reserved - max_new_tokens)

    def count(self, messages: Messages) -> int:
        return len(self.encode(messages))


def context_length(model: Any) -> int | None:
    """The longest sequence ``model`` reads, from its config (None when it says nothing)."""
    config = getattr(model, "config", None)
    for name in CONTEXT_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def fit(
    budget: Budget, room: int, build: Callable[[list[Hit]], Messages], hits: Sequence[Hit]
) -> tuple[list[Hit], Messages, list[int]]:
    """The passages that fit in ``room`` tokens (in rank order, the last maybe cut short), the
    prompt ``build`` makes of them and its token ids (the engine prefills these, so it need not
    encode the prompt again). Raises ``PromptTooLong`` when the prompt is over ``room`` with no
    passages."""
    ranked = list(hits)
    messages = build(ranked)
    ids = budget.encode(messages)
    if len(ids) <= room:
        return ranked, messages, ids
    bare = budget.count(build([]))
    if bare > room:
        raise PromptTooLong(bare, room)

    def fits(shown: list[Hit]) -> bool:
        return budget.count(build(shown)) <= room

    whole, over = 0, len(ranked)  # the first ``whole`` fit; all ``over`` do not
    while over - whole > 1:
        mid = (whole + over) // 2
        whole, over = (mid, over) if fits(ranked[:mid]) else (whole, mid)
    kept = ranked[:whole]
    cut = _cut(ranked[whole], lambda h: fits([*kept, h]))
    if cut is not None:
        kept.append(cut)
    messages = build(kept)
    return kept, messages, budget.encode(messages)


def _cut(hit: Hit, fits: Callable[[Hit], bool]) -> Hit | None:
    """``hit`` cut at the last word end that still fits, or None when not one word does."""
    ends = [m.end() for m in WORD_END.finditer(hit.text)]
    best, lo, hi = None, 0, len(ends) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = replace(hit, text=hit.text[: ends[mid]], end=hit.start + ends[mid])
        if fits(candidate):
            best, lo = candidate, mid + 1
        else:
            hi = mid - 1
    return best

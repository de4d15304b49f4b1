"""The KV cache surgery under the generation engine: rows that decode together over one
left-padded cache (dropping finished rows, merging joining ones), and the prefix cache that lets
prompts sharing a head skip its prefill.

Knows nothing of scheduling, sampling or requests beyond the rows' list of them. Works on
transformers' ``DynamicCache`` layers (keys and values of shape (rows, heads, width, head_dim)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.generation.request import GenerationRequest


@dataclass
class Rows:
    """The requests decoding together, one row each, over one left-padded KV cache."""

    jobs: list[GenerationRequest]
    cache: Any  # transformers' DynamicCache: keys and values (rows, heads, width, head_dim)
    mask: Any  # (rows, width): 1 where the cache holds one of the row's tokens, 0 for padding
    positions: Any  # (rows, 1): position of each row's next input token
    next_ids: Any  # (rows, 1): each row's next input token

    def select(self, keep: list[int]) -> None:
        """Keep only rows ``keep``, then drop padding columns no row needs any more."""
        import torch

        idx = torch.tensor(keep, device=self.mask.device)
        self.jobs = [self.jobs[r] for r in keep]
        self.mask, self.positions, self.next_ids = (
            self.mask[idx],
            self.positions[idx],
            self.next_ids[idx],
        )
        used = self.mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0
        if start:
            self.mask = self.mask[:, start:]
        for layer in layers(self.cache):
            layer.keys = layer.keys[idx, :, start:]
            layer.values = layer.values[idx, :, start:]


class PrefixCache:
    """Keys and values of the last few prompts prefilled, per adapter, for reuse by prompts
    that start with the same tokens (automatic prefix caching, in a simple form).

    Requests to one assistant share a long head: the chat template's system turn and, in rag
    mode, the grounding instructions. A hit prefills only the rest of each prompt. Entries are
    one row, sliced out of a batch's cache (padding columns dropped), at most ``max_tokens``
    long, ``per_key`` of them per adapter, most recently used first; prefixes shorter than
    ``min_tokens`` are not worth the copy and are ignored.
    """

    def __init__(self, min_tokens: int = 8, max_tokens: int = 2048, per_key: int = 4) -> None:
        self.min_tokens = min_tokens
        self.max_tokens = max_tokens
        self.per_key = per_key
        self._entries: dict[Any, list[tuple[list[int], Any]]] = {}
        self.hits = 0
        self.reused_tokens = 0

    def lookup(self, key: Any, prompts: list[list[int]], rows: int) -> tuple[int, Any]:
        """(n, cache): the first ``n`` tokens of every prompt are cached, and ``cache`` holds
        them for ``rows`` rows; (0, None) on a miss. At least one token of each prompt is left
        to run, so the model still gives the next-token logits."""
        entries = self._entries.get(key, [])
        best, best_n = -1, 0
        for at, (ids, _) in enumerate(entries):
            n = min(len(ids), *(len(p) - 1 for p in prompts))
            for p in prompts:
                n = common_prefix(ids, p, n)
            if n > best_n:
                best, best_n = at, n
        if best_n < self.min_tokens:
            return 0, None
        entries.insert(0, entries.pop(best))
        self.hits += 1
        self.reused_tokens += best_n * len(prompts)
        return best_n, with_layers(
            entries[0][1],
            lambda t: t[:, :, :best_n].expand(rows, -1, -1, -1).contiguous(),
        )

    def store(self, key: Any, prompt: list[int], cache: Any, mask_row: Any) -> None:
        """Keep ``prompt``'s keys and values: row 0 of ``cache``, the columns ``mask_row`` marks."""
        if not mergeable(cache) or len(prompt) < self.min_tokens:
            return
        for old in [k for k in self._entries if k[0] == key[0] and k != key]:
            del self._entries[old]  # an older generation of this adapter
        if len(self._entries) >= 64 and key not in self._entries:  # adapters come and go
            self._entries.clear()
        cols = mask_row.nonzero().squeeze(1)[: self.max_tokens]
        ids = list(prompt[: len(cols)])
        entries = [  # an entry this one extends (or repeats) is no longer needed
            e for e in self._entries.get(key, []) if e[0] != ids[: len(e[0])]
        ]
        entries.insert(0, (ids, with_layers(cache, lambda t: t[:1].index_select(2, cols))))
        self._entries[key] = entries[: self.per_key]


def common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = 0
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def with_layers(cache: Any, fn: Any) -> Any:
    """A new cache object like ``cache`` whose layers hold ``fn(keys)`` and ``fn(values)``."""
    import copy

    out = copy.copy(cache)
    out.layers = []
    for layer in layers(cache):
        new = copy.copy(layer)
        new.__dict__.pop("_key_room", None)  # a _SlackLayer's buffer stays with its owner
        new.__dict__.pop("_value_room", None)
        new.keys, new.values = fn(layer.keys), fn(layer.values)
        out.layers.append(new)
    return out


def layers(cache: Any) -> list[Any]:
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise TypeError(f"cannot reshape a {type(cache).__name__}; it has no per-layer tensors")
    return list(layers)


def mergeable(cache: Any) -> bool:
    """Only plain dynamic layers (full keys and values per layer) are merged and sliced."""
    layers = getattr(cache, "layers", None) or []
    return bool(layers) and all(
        type(layer).__name__ in ("DynamicLayer", "_SlackLayer") for layer in layers
    )


def with_slack(cache: Any) -> Any:
    """Let ``cache``'s layers grow into spare room instead of being copied at every step.

    transformers' DynamicLayer appends a step's keys with ``torch.cat``, copying the whole cache
    for every token (10% of a 16-row decode step on CPU). A ``_SlackLayer`` writes into a
    buffer with room to spare and hands out a view; it is a DynamicLayer in every other way.
    """
    if not mergeable(cache):
        return cache
    slack = slack_class(type(cache.layers[0]))
    for layer in cache.layers:
        layer.__class__ = slack
    return cache


_SLACK: dict[type, type] = {}


def slack_class(dynamic: type) -> type:
    if dynamic.__name__ == "_SlackLayer":
        return dynamic
    if dynamic not in _SLACK:

        class _SlackLayer(dynamic):  # type: ignore[valid-type, misc]
            def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> Any:
                held: Any = self.__dict__
                if not held.get("is_initialized") or held["keys"].numel() == 0:
                    return super().update(key_states, value_states, *args, **kwargs)
                keys = append_layer(self, "_key_room", held["keys"], key_states)
                values = append_layer(self, "_value_room", held["values"], value_states)
                self.keys, self.values = keys, values
                return keys, values

        _SLACK[dynamic] = _SlackLayer
    return _SLACK[dynamic]


def append_layer(layer: Any, slot: str, held: Any, new: Any) -> Any:
    """``held`` then ``new`` along the sequence, written into ``layer``'s spare room when
    ``held`` is the start of it; otherwise into a new buffer with a quarter more room (64 at
    least)."""
    import torch

    room = layer.__dict__.get(slot)
    used, add = held.shape[-2], new.shape[-2]
    fits = (
        room is not None
        and room.shape[0] == held.shape[0]
        and held.data_ptr() == room.data_ptr()
        and room.shape[-2] >= used + add
        and held.stride() == room.stride()
    )
    if not fits:
        b, h, _, d = held.shape
        size = used + add + max(64, (used + add) // 4)
        room = torch.empty((b, h, size, d), dtype=held.dtype, device=held.device)
        room[:, :, :used] = held
        layer.__dict__[slot] = room
    room[:, :, used : used + add] = new
    return room[:, :, : used + add]


def merge(a: Rows, b: Rows) -> Rows:
    """``a``'s rows then ``b``'s over one cache, the narrower left-padded to the wider. All is
    computed before ``a`` changes: if this raises, ``a`` is as it was."""
    import torch
    import torch.nn.functional as F

    width = max(a.mask.shape[1], b.mask.shape[1])
    pa, pb = width - a.mask.shape[1], width - b.mask.shape[1]
    merged = [
        (
            torch.cat([F.pad(la.keys, (0, 0, pa, 0)), F.pad(lb.keys, (0, 0, pb, 0))]),
            torch.cat([F.pad(la.values, (0, 0, pa, 0)), F.pad(lb.values, (0, 0, pb, 0))]),
        )
        for la, lb in zip(layers(a.cache), layers(b.cache), strict=True)
    ]
    mask = torch.cat([F.pad(a.mask, (pa, 0)), F.pad(b.mask, (pb, 0))])
    positions = torch.cat([a.positions, b.positions])
    next_ids = torch.cat([a.next_ids, b.next_ids])
    for layer, (keys, values) in zip(layers(a.cache), merged, strict=True):
        layer.keys, layer.values = keys, values
    a.mask, a.positions, a.next_ids = mask, positions, next_ids
    a.jobs += b.jobs
    return a


def cache_arg(model: Any) -> str:
    """transformers renamed ``past_key_values`` to ``cache`` (5.2x); accept both."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"

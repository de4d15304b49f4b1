"""Example sets as a recipe combines them: split into train/val/test, mix datasets by weight, hash.

``split`` decides membership from each example's content and the seed (not the file's order),
``mix`` repeats or samples each dataset to its weighted share of a shuffled whole, and
``dataset_hash`` fingerprints the conversations (not their meta) for an adapter's lineage.
Everything is deterministic given the seed. Knows nothing of files, tokenizers or training.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from tuner.data import Example, canonical


def split(
    examples: Sequence[Example], val_fraction: float, test_fraction: float, seed: int
) -> tuple[list[Example], list[Example], list[Example]]:
    """(train, val, test), disjoint. Membership depends on each example's content and ``seed``,
    not on the file's order; each split keeps the input order. A nonzero fraction holds at least
    one example once there are three or more, and the train split is never empty."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"split: fractions {val_fraction}, {test_fraction} must leave a train set")
    n = len(examples)
    n_val, n_test = _share(n, val_fraction), _share(n, test_fraction)
    while n_val + n_test >= n and n_val + n_test > 0:  # always leave something to train on
        n_val, n_test = (n_val - 1, n_test) if n_val >= n_test else (n_val, n_test - 1)

    def rank(i: int) -> str:
        key = f"{seed}\0{canonical(examples[i].messages)}"
        return hashlib.sha256(key.encode("utf-8")).hexdigest()

    order = sorted(range(n), key=lambda i: (rank(i), i))
    val, test = set(order[:n_val]), set(order[n_val : n_val + n_test])
    train = [e for i, e in enumerate(examples) if i not in val and i not in test]
    return train, [examples[i] for i in sorted(val)], [examples[i] for i in sorted(test)]


def _share(n: int, fraction: float) -> int:
    k = round(n * fraction)
    return max(k, 1) if fraction > 0 and n >= 3 else k


def mix(
    datasets: Sequence[Sequence[Example]],
    weights: Sequence[float],
    seed: int,
    total: int | None = None,
) -> list[Example]:
    """A shuffled multi-task mix of ``total`` examples (default: all of them together) where
    dataset i gives a share proportional to weights[i]: a set smaller than its share is repeated
    (every example k or k+1 times), a larger one is sampled without replacement."""
    if len(datasets) != len(weights) or not datasets:
        raise ValueError("mix: one weight per dataset, and at least one dataset")
    if any(w <= 0 for w in weights) or any(not d for d in datasets):
        raise ValueError("mix: every weight must be > 0 and every dataset non-empty")
    total = sum(len(d) for d in datasets) if total is None else total
    if total < 1:
        raise ValueError(f"mix: total must be >= 1, got {total}")
    rng = random.Random(seed)
    out: list[Example] = []
    for data, quota in zip(datasets, _quotas(weights, total), strict=True):
        repeats, rest = divmod(quota, len(data))
        out += [e for _ in range(repeats) for e in data]
        out += [data[i] for i in sorted(rng.sample(range(len(data)), rest))]
    rng.shuffle(out)
    return out


def _quotas(weights: Sequence[float], total: int) -> list[int]:
    """Integer shares of ``total`` proportional to ``weights`` (largest remainder)."""
    exact = [total * w / sum(weights) for w in weights]
    quotas = [int(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: quotas[i] - exact[i])
    for i in by_remainder[: total - sum(quotas)]:
        quotas[i] += 1
    return quotas


def dataset_hash(examples: Sequence[Example]) -> str:
    """sha256 (hex) of the canonical JSON of every example's messages, in order; meta is left
    out, so the same conversations read from another file hash the same."""
    return hashlib.sha256(canonical([e.messages for e in examples]).encode("utf-8")).hexdigest()

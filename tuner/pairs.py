"""Training pairs for the embedder: (query, positive passage, hard negatives).

Pairs come from a user's JSONL (``query``, ``positive``, optional ``negatives``; every bad line
reported with its number) or are cut from indexed chunks without any labelled question: one
sentence of a chunk (``tuner.sentences``, language-neutral) becomes the pseudo-query and the
rest of the chunk its positive (works for English and Chinese, whose sentences end with 。！？).
Hard negatives are mined from the live index: hits ranked inside a window (not the very top,
which is often a paraphrase of the positive), scoring below ``margin`` times the positive's own
score, never the positive's chunk or a near-duplicate of its text. ``tuner.prepare.prepare_pairs``
drives it; knows nothing of training.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.data import DataError, jsonl_records
from tuner.sentences import sentences


@dataclass
class Pair:
    query: str
    positive: str
    negatives: list[str] = field(default_factory=list)
    chunk_id: int | None = None  # the positive's chunk, when cut from the index
    doc_id: str | None = None


def read_pairs(path: str | Path) -> list[Pair]:
    """Pairs from JSONL lines ``{"query", "positive", "negatives"?}``; DataError lists every
    bad line."""
    pairs: list[Pair] = []
    records, problems = jsonl_records(Path(path))
    for n, rec in records:
        why = _bad_record(rec)
        if why:
            problems.append((n, why))
            continue
        pairs.append(
            Pair(rec["query"].strip(), rec["positive"].strip(), list(rec.get("negatives", [])))
        )
    if not pairs and not problems:
        problems.append((0, "no records"))
    if problems:
        raise DataError(sorted(problems), path)
    return pairs


def write_pairs(pairs: Iterable[Pair], path: Path) -> int:
    """One JSON object per line, in the shape ``read_pairs`` reads; returns the count."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for p in pairs:
            body: dict[str, Any] = {"query": p.query, "positive": p.positive}
            body["negatives"] = p.negatives
            if p.doc_id is not None:
                body["doc_id"] = p.doc_id
            f.write(json.dumps(body, ensure_ascii=False) + "\n")
            n += 1
    return n


def dedup_queries(pairs: Iterable[Pair]) -> list[Pair]:
    """The first pair of each query text (a repeated query with another positive is noise)."""
    seen: set[str] = set()
    out = []
    for p in pairs:
        key = " ".join(p.query.split()).lower()
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _bad_record(rec: dict[str, Any]) -> str | None:
    for key in ("query", "positive"):
        if not isinstance(rec.get(key), str) or not rec[key].strip():
            return f"'{key}' must be a non-empty string"
    negatives = rec.get("negatives", [])
    if not isinstance(negatives, list) or not all(isinstance(x, str) for x in negatives):
        return "'negatives' must be a list of strings"
    return None


def pseudo_pairs(
    chunks: Iterable[Any], max_pairs: int, seed: int = 42, min_chars: int = 12
) -> list[Pair]:
    """One pair per chunk at most: a random sentence (at least ``min_chars``) as the query, the
    chunk without it as the positive. Chunks with fewer than two sentences are skipped."""
    rng = random.Random(seed)
    out = []
    for chunk in chunks:
        parts = sentences(chunk.text)
        picks = [i for i, s in enumerate(parts) if len(s) >= min_chars]
        if len(parts) < 2 or not picks:
            continue
        at = rng.choice(picks)
        rest = " ".join(parts[:at] + parts[at + 1 :])
        out.append(Pair(parts[at], rest, chunk_id=chunk.id, doc_id=chunk.doc_id))
    rng.shuffle(out)
    return out[:max_pairs]


def _near_duplicate(a: str, b: str, threshold: float = 0.8) -> bool:
    """Character-bigram Jaccard similarity above ``threshold`` (language-neutral)."""
    grams_a = {a[i : i + 2] for i in range(len(a) - 1)}
    grams_b = {b[i : i + 2] for i in range(len(b) - 1)}
    if not grams_a or not grams_b:
        return a == b
    return len(grams_a & grams_b) / len(grams_a | grams_b) >= threshold


def mine_negatives(
    pairs: Sequence[Pair],
    search: Callable[[str, int], Sequence[Any]],
    n: int = 3,
    window: tuple[int, int] = (3, 30),
    margin: float = 0.95,
) -> list[Pair]:
    """Add up to ``n`` hard negatives per pair: hits ranked ``window[0]``..``window[1]`` for the
    query, scoring below ``margin`` times the best positive-chunk score seen (a hit scoring
    like the positive is likely a false negative), never the positive's chunk nor a near
    duplicate of the positive text."""
    lo, hi = window
    if not 0 <= lo < hi:
        raise ValueError(f"window must satisfy 0 <= start < end, got {window}")
    out = []
    for pair in pairs:
        hits = list(search(pair.query, hi))
        own = [h.score for h in hits if h.chunk_id == pair.chunk_id]
        ceiling = margin * own[0] if own else None
        negatives = []
        for hit in hits[lo:hi]:
            if hit.chunk_id == pair.chunk_id or _near_duplicate(hit.text, pair.positive):
                continue
            if ceiling is not None and hit.score >= ceiling:
                continue
            negatives.append(hit.text)
            if len(negatives) == n:
                break
        out.append(Pair(pair.query, pair.positive, negatives, pair.chunk_id, pair.doc_id))
    return out

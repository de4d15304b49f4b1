"""Pseudo-queries from the index's own chunks, for fitting what needs questions without any.

A pseudo-query is one sentence from the middle of a chunk, and the document it came from is its
answer. A sentence copied from a chunk matches that chunk word for word, which no real question
does: that bias is removed by holding the sentence's own chunk out of both ranked lists, so a
hit is another chunk of the same document (only documents with two chunks or more are sampled).
Sentences within ``edge`` characters of a chunk's ends are skipped, as they are repeated in the
neighbouring chunk's overlap. Pure: no model, no I/O.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from retriever.sparse import tokenize

_SENTENCE = re.compile(r"[^.!?;。！？；\n]+[.!?;。！？；]?")


@dataclass(frozen=True)
class PseudoQuery:
    text: str
    doc_id: str  # the document that answers it
    held_out: int  # the chunk it was taken from, left out of the ranked lists


def pseudo_queries(
    chunks: Sequence[tuple[int, str, str]],
    n: int,
    seed: int = 0,
    edge: int = 80,
    min_terms: int = 4,
    max_terms: int = 32,
) -> list[PseudoQuery]:
    """Up to ``n`` pseudo-queries from ``(chunk id, document id, text)`` rows: chunks drawn at
    random (seeded), one sentence of ``min_terms`` to ``max_terms`` BM25 terms from each."""
    per_doc: dict[str, int] = {}
    for _, doc_id, _ in chunks:
        per_doc[doc_id] = per_doc.get(doc_id, 0) + 1
    rng = random.Random(seed)
    order = [c for c in chunks if per_doc[c[1]] >= 2]
    rng.shuffle(order)
    out: list[PseudoQuery] = []
    for cid, doc_id, text in order:
        spans = [
            m.group().strip()
            for m in _SENTENCE.finditer(text)
            if m.start() >= edge and m.end() <= len(text) - edge
        ]
        spans = [s for s in spans if min_terms <= len(tokenize(s)) <= max_terms]
        if spans:
            out.append(PseudoQuery(rng.choice(spans), doc_id, cid))
            if len(out) == n:
                break
    return out

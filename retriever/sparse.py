"""BM25 over stemmed words (Latin scripts) and CJK characters, via bm25s.

English words are lowercased, stripped of common stopwords and Snowball-stemmed (PyStemmer);
on the Debian FAQ (English, with Reference distractors) that lifts BM25 recall@10 from 0.633 to
0.667 and MRR@10 from 0.401 to 0.463 over plain lowercased words.

CJK runs (Chinese, Japanese kana, Hangul) are read twice: a field of character bigrams and a
field of single characters, each its own BM25 index over the same chunks, a chunk's score the
mean of the two (Latin words sit in both fields). On the Debian FAQ zh set, sparse only
(R@1 / R@5 / R@10 / MRR@10): bigrams alone 0.367 / 0.660 / 0.728 / 0.487, unigrams alone
0.333 / 0.653 / 0.735 / 0.466, both in one index 0.347 / 0.639 / 0.748 / 0.474, the two fields
0.367 / 0.687 / 0.776 / 0.505. English ranks every query identically under each, and an index
with no CJK text builds one field only. Measured with

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/cjk_analysis.py --lang en zh

bm25s has no incremental update, so ``LiveSparse`` keeps a base index plus a small delta of chunks
written since, and rebuilds the base only when the delta or the removals pass a fraction of it
(costs measured in benchmarks/retriever_bench.py). Nothing is persisted: an index opened again
builds its BM25 from the stored chunk texts at its first sparse search.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np

_WORD = re.compile(r"[0-9a-z_]+(?:[.\-][0-9a-z_]+)*")
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]+")


@lru_cache(maxsize=1)
def _stemmer() -> Any:
    import Stemmer  # PyStemmer

    return Stemmer.Stemmer("english")


@lru_cache(maxsize=1)
def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN_PLUS

    return frozenset(STOPWORDS_EN_PLUS)


CjkAnalysis = Callable[[str], list[str]]  # one CJK run -> its tokens


def cjk_bigrams(run: str) -> list[str]:
    """Overlapping character bigrams; a lone character stays a unigram."""
    return [run] if len(run) == 1 else [run[i : i + 2] for i in range(len(run) - 1)]


def cjk_unigrams(run: str) -> list[str]:
    """Every character on its own."""
    return list(run)


def cjk_unigrams_bigrams(run: str) -> list[str]:
    """Every character, each followed by the bigram that starts with it."""
    tokens: list[str] = []
    for i, char in enumerate(run):
        tokens.append(char)
        if i + 1 < len(run):
            tokens.append(run[i : i + 2])
    return tokens


# The fields SparseIndex scores by default: the text under each of these CJK analyses is its own
# BM25 index, and a chunk's score is the mean over fields (chosen in benchmarks/cjk_analysis.py).
FIELDS: tuple[CjkAnalysis, ...] = (cjk_bigrams, cjk_unigrams)


def tokenize(text: str, cjk: CjkAnalysis = cjk_bigrams) -> list[str]:
    """Stemmed words without stopwords, plus the tokens of each CJK run under ``cjk``. Latin
    words are the same whatever ``cjk`` is."""
    text = text.lower()
    stop = _stopwords()
    tokens = _stemmer().stemWords([w for w in _WORD.findall(text) if w not in stop])
    for run in CJK.findall(text):
        tokens += cjk(run)
    return tokens


class _Field:
    """One bm25s index over the texts under one CJK analysis."""

    def __init__(self, texts: list[str], cjk: CjkAnalysis) -> None:
        import bm25s

        self.cjk = cjk
        corpus = [tokenize(t, cjk) or ["\u0000"] for t in texts]
        self.vocab = {tok for doc in corpus for tok in doc}
        self.bm25 = bm25s.BM25()
        self.bm25.index(corpus, show_progress=False)

    def scores(self, query: str) -> np.ndarray | None:
        """BM25 score of every text for ``query``; None when no query token is in the vocabulary."""
        tokens = [t for t in tokenize(query, self.cjk) if t in self.vocab]
        return np.asarray(self.bm25.get_scores(tokens), dtype=np.float64) if tokens else None


class SparseIndex:
    """BM25 over a fixed list of (chunk id, text); build a new one when the texts change.

    Each of ``fields`` (CJK analyses) is its own BM25 index over the same texts, and a chunk
    scores the mean over fields. Text without CJK reads the same in every field, so its ranking
    and scores are those of a single index; when no text has CJK, only the first field is built.
    """

    def __init__(
        self, ids: list[int], texts: list[str], fields: tuple[CjkAnalysis, ...] = FIELDS
    ) -> None:
        if not fields:
            raise ValueError("fields must name at least one CJK analysis")
        if not any(CJK.search(t) for t in texts):
            fields = fields[:1]  # every field would be the same index
        self.ids = np.asarray(ids, dtype=np.int64)
        self._fields = [_Field(texts, cjk) for cjk in fields] if ids else []
        self._n_fields = len(fields)

    @property
    def vocabulary(self) -> int:
        """Distinct tokens over all fields."""
        return len(set().union(*(f.vocab for f in self._fields)))

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        per_field = [s for s in (f.scores(query) for f in self._fields) if s is not None]
        if not per_field:
            return []
        total = np.sum(per_field, axis=0) / self._n_fields  # (n_texts,)
        k = min(k, len(total))
        top = np.argpartition(-total, k - 1)[:k]
        top = top[np.lexsort((top, -total[top]))]  # best first, ties by position
        return [(int(self.ids[d]), float(total[d])) for d in top if total[d] > 0]


class LiveSparse:
    """BM25 that follows writes without a full rebuild each time.

    A base index covers the chunks present at its last build; chunks added since sit in a small
    delta index (rebuilt, cheaply, at the next search after a change) and removed ids are
    filtered out. When the delta or the removals pass ``rebuild_fraction`` of the base, the next
    search rebuilds the base from ``load()``. Delta scores use the delta's own IDF statistics,
    so they are close to, not exactly, what a full rebuild would give.
    """

    def __init__(self, load: Any, rebuild_fraction: float = 0.05, min_delta: int = 256) -> None:
        self._load = load  # () -> (ids, texts) of every live chunk
        self.rebuild_fraction = rebuild_fraction
        self.min_delta = min_delta
        self._base: SparseIndex | None = None
        self._delta: dict[int, str] = {}
        self._delta_index: SparseIndex | None = None
        self._removed: set[int] = set()
        self.rebuilds = 0

    def apply(self, removed: list[int], added: list[int], texts: list[str]) -> None:
        """Record a write; called under the retriever's write lock."""
        for cid in removed:
            if self._delta.pop(cid, None) is None:
                self._removed.add(cid)
        self._delta.update(zip(added, texts, strict=True))
        self._delta_index = None

    def invalidate(self) -> None:
        self._base = None

    def _fresh(self) -> tuple[SparseIndex, SparseIndex | None]:
        if self._base is not None:
            limit = max(self.min_delta, int(self.rebuild_fraction * len(self._base.ids)))
            if len(self._delta) + len(self._removed) > limit:
                self._base = None
        if self._base is None:
            self._base = SparseIndex(*self._load())
            self._delta, self._removed, self._delta_index = {}, set(), None
            self.rebuilds += 1
        if self._delta and self._delta_index is None:
            self._delta_index = SparseIndex(list(self._delta), list(self._delta.values()))
        return self._base, self._delta_index if self._delta else None

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        """Call with the retriever's read lock and this object's own lock held."""
        base, delta = self._fresh()
        removed = self._removed
        hits = [(c, s) for c, s in base.search(query, k + len(removed)) if c not in removed]
        if delta is not None:
            hits += delta.search(query, k)
        return sorted(hits, key=lambda h: -h[1])[:k]

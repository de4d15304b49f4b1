"""BM25 over words (Latin scripts) and character bigrams (Chinese, Japanese, Korean), via bm25s.

The index is rebuilt from the live chunks when it is stale (after any write) at the next sparse
search; bm25s has no incremental update. Rebuild cost is measured in the retriever benchmark.
"""

from __future__ import annotations

import re

import numpy as np

_WORD = re.compile(r"[0-9a-z_]+(?:[.\-][0-9a-z_]+)*")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]+")


def tokenize(text: str) -> list[str]:
    """Lowercased words plus character bigrams of CJK runs (a lone character stays a unigram)."""
    text = text.lower()
    tokens = _WORD.findall(text)
    for run in _CJK.findall(text):
        tokens += [run] if len(run) == 1 else [run[i : i + 2] for i in range(len(run) - 1)]
    return tokens


class SparseIndex:
    """BM25 over a fixed list of (chunk id, text); build a new one when the texts change."""

    def __init__(self, ids: list[int], texts: list[str]) -> None:
        import bm25s

        self.ids = np.asarray(ids, dtype=np.int64)
        self._bm25 = bm25s.BM25()
        self._vocab: set[str] = set()
        if ids:
            corpus = [tokenize(t) or ["\u0000"] for t in texts]
            self._vocab = {tok for doc in corpus for tok in doc}
            self._bm25.index(corpus, show_progress=False)

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        tokens = [t for t in tokenize(query) if t in self._vocab]
        if not tokens or len(self.ids) == 0:
            return []
        k = min(k, len(self.ids))
        docs, scores = self._bm25.retrieve([tokens], k=k, show_progress=False)
        pairs = zip(docs[0], scores[0], strict=True)
        return [(int(self.ids[d]), float(s)) for d, s in pairs if s > 0]

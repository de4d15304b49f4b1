"""A deterministic fake embedder: hashed bag of tokens, unit-normalised (no model needed)."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from retriever.sparse import tokenize


class FakeEmbedder:
    def __init__(self, dim: int = 64, name: str = "fake") -> None:
        self._dim = dim
        self.name = name
        self.calls = 0
        self.texts_embedded = 0

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self._dim}

    def encode(self, texts: list[str], **_: Any) -> np.ndarray:
        self.calls += 1
        self.texts_embedded += len(texts)
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for tok in tokenize(text) or ["<empty>"]:
                h = int(hashlib.md5(tok.encode()).hexdigest()[:8], 16)
                out[row, h % self._dim] += 1.0
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out

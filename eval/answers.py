"""Answer metrics as pure functions: token F1 and ROUGE-L against a reference answer, and a
paired bootstrap interval for the difference between two systems on the same questions.

Text is normalised SQuAD-style (lower case, punctuation and English articles dropped); Chinese
is compared character by character. Knows nothing of models or retrieval.
"""

from __future__ import annotations

import random
import re
import string
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_PUNCT = str.maketrans("", "", string.punctuation + "，。！？；：、（）《》“”‘’")


def tokens(text: str) -> list[str]:
    """Normalised tokens: words, with each CJK character its own token."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    text = _CJK.sub(lambda m: f" {m.group(0)} ", text)
    return text.split()


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = tokens(prediction), tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (beta = 1) over normalised tokens."""
    pred, ref = tokens(prediction), tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    lcs = _lcs(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], resamples: int = 10_000, seed: int = 0
) -> dict[str, float]:
    """Mean of ``b - a`` and its 95% percentile interval from resampling questions."""
    if len(a) != len(b) or not a:
        raise ValueError("paired scores need two equally long, non-empty lists")
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return {
        "mean_diff": sum(diffs) / n,
        "ci_low": means[int(0.025 * resamples)],
        "ci_high": means[int(0.975 * resamples) - 1],
        "b_wins": sum(d > 0 for d in diffs) / n,
    }

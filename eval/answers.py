"""Answer metrics as pure functions: exact match, token F1 and ROUGE-L against gold answers,
groundedness in the cited passages, citation precision and recall, and whether a passage holds
the answer.

Text is normalised SQuAD-style (lower case, punctuation and English articles dropped); Chinese
is compared character by character. Citation markers like ``[2]`` are not part of an answer.
Knows nothing of models or retrieval.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_PUNCT = str.maketrans("", "", string.punctuation + "，。！？；：、（）《》“”‘’")


_MARKER = re.compile(r"\[(\d{1,2})\]")
# Function words that say nothing about support: an answer is not grounded by its "is" and "to".
_STOPWORD_TEXT = (
    "i me my we our you your he him his she her it its they them their what which who whom this "
    "that these those am is are was were be been being have has had having do does did doing and "
    "but if or because as until while of at by for with about against between into through "
    "during before after above below to from up down in out on off over under again further then "
    "once here there when where why how all any both each few more most other some such no nor "
    "not only own same so than too very s t can will just don should now also may might must "
    "would could shall"
)
STOPWORDS = frozenset(_STOPWORD_TEXT.split())


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


def strip_markers(text: str) -> str:
    """The answer without its citation markers."""
    return _MARKER.sub(" ", text)


def cited(text: str, n_passages: int) -> list[int]:
    """1-based passage numbers the answer cites with ``[n]`` markers (valid ones, in order)."""
    found = (int(m) for m in _MARKER.findall(text))
    return list(dict.fromkeys(i for i in found if 1 <= i <= n_passages))


def exact_match(prediction: str, reference: str) -> float:
    return float(tokens(prediction) == tokens(reference) and bool(tokens(reference)))


def best_of(metric: Callable[[str, str], float], prediction: str, golds: Iterable[str]) -> float:
    """The metric against the closest gold answer (any accepted answer counts)."""
    return max((metric(prediction, g) for g in golds), default=0.0)


def content_tokens(text: str) -> list[str]:
    return [t for t in tokens(text) if t not in STOPWORDS]


def groundedness(answer: str, passages: Sequence[str]) -> float | None:
    """Share of the answer's content tokens found in the passages (None: nothing to check)."""
    said = content_tokens(strip_markers(answer))
    if not said or not passages:
        return None
    support = set(content_tokens(" ".join(passages)))
    return sum(t in support for t in said) / len(said)


def citation_scores(cited_ids: Sequence[str], gold_ids: set[str] | frozenset[str]) -> dict:
    """Precision (share of cited documents that are gold) and recall (share of gold cited)."""
    if not gold_ids:
        return {"citation_precision": None, "citation_recall": None}
    cited_set = set(cited_ids)
    right = len(cited_set & gold_ids)
    return {
        "citation_precision": right / len(cited_set) if cited_set else None,
        "citation_recall": right / len(gold_ids),
    }


ANSWER_RECALL = 0.5  # a passage "holds" a long answer when half its content tokens are in it


def holds_answer(passages: Sequence[str], golds: Iterable[str]) -> bool:
    """Whether the passages contain a gold answer: verbatim (normalised), or, for an answer of
    several content words, at least ``ANSWER_RECALL`` of them. Needs no relevance labels."""
    text = " ".join(tokens(" ".join(passages)))
    support = set(content_tokens(" ".join(passages)))
    for gold in golds:
        norm = " ".join(tokens(gold))
        if norm and f" {norm} " in f" {text} ":
            return True
        words = set(content_tokens(gold))
        if len(words) >= 4 and len(words & support) / len(words) >= ANSWER_RECALL:
            return True
    return False

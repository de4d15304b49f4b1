"""Which component is weak: every wrong answer of a retrieval mode classed by where it failed.

- retrieval: no gold passage among the k in the prompt, and the answer stays with what it was
  given (grounded in the passages, or a refusal): a better retriever is what it needed;
- generation: a gold passage was in the prompt and the answer is still wrong;
- both: no gold passage, and the answer is not grounded in the passages either (the generator
  made something up instead of reading or declining).

A gold passage is one the relevance labels name, or, without labels, a passage that holds a gold
answer (``eval.answers.holds_answer``). The weak component is the one behind at least
``SHARE`` of the wrong answers (both, when each is); the action names the tuning recipe.
Knows nothing of models or of how the answers were made.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

SHARE = 0.4  # a component is weak when it is behind this share of the wrong answers
GROUNDED = 0.5  # an answer is grounded when this share of its content is in its passages
RETRIEVER_RECIPE = "configs/retriever-pairs.yaml"
GENERATOR_RECIPE = "configs/raft-hybrid.yaml"
ACTIONS = {
    "retriever": (
        "tune the retriever (contrastive, on queries mined from the documents)",
        [RETRIEVER_RECIPE],
    ),
    "generator": (
        "tune the generator with RAFT data (questions from the documents, answered "
        "from passages among distractors)",
        [GENERATOR_RECIPE],
    ),
    "both": (
        "tune the retriever first, then the generator with RAFT data on the new index",
        [RETRIEVER_RECIPE, GENERATOR_RECIPE],
    ),
    "none": ("nothing to tune: no wrong answers", []),
}


def is_wrong(scores: dict[str, Any], correct_f1: float) -> bool | None:
    """Wrong unless an exact match or token F1 >= ``correct_f1``; None without a gold answer."""
    if scores.get("token_f1") is None:
        return None
    return not (scores.get("exact_match") or scores["token_f1"] >= correct_f1)


def failure(gold_in_prompt: bool, grounded: float | None, refused: bool) -> str:
    """The class of one wrong answer."""
    if gold_in_prompt:
        return "generation"
    if refused or (grounded is not None and grounded >= GROUNDED):
        return "retrieval"
    return "both"


def diagnose(mode: str, failures: Sequence[str | None], questions: int, rule: str) -> dict:
    """Counts per class over the wrong answers of ``mode``, the weak component and the action."""
    counts = Counter(f for f in failures if f is not None)
    wrong = sum(counts.values())
    retrieval = (counts["retrieval"] + counts["both"]) / wrong if wrong else 0.0
    generation = (counts["generation"] + counts["both"]) / wrong if wrong else 0.0
    if not wrong:
        weak = "none"
    elif retrieval >= SHARE and generation >= SHARE:
        weak = "both"
    else:
        weak = "retriever" if retrieval > generation else "generator"
    action, recipes = ACTIONS[weak]
    return {
        "mode": mode,
        "questions": questions,
        "wrong": wrong,
        "rule": rule,
        "counts": {c: counts[c] for c in ("retrieval", "generation", "both")},
        "shares": {"retriever": retrieval, "generator": generation},
        "weak": weak,
        "action": action,
        "recipes": recipes,
        "commands": [f"ragtune tune --recipe {r}" for r in recipes],
    }


REFUSALS = (
    "i don't know",
    "i do not know",
    "not in the passages",
    "cannot answer",
    "can't answer",
    "no information",
    "不知道",
    "无法回答",
)


def refused(answer: str) -> bool:
    low = answer.lower()
    return any(r in low for r in REFUSALS)

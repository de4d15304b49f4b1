"""Which component is weak: every wrong answer of a retrieval mode classed by where it failed.

- retrieval: no gold passage among the k in the prompt, and the answer stays with what it was
  given (grounded in the passages, or a refusal): a better retriever is what it needed;
- generation: a gold passage was in the prompt and the answer is still wrong;
- both: no gold passage, and the answer is not grounded in the passages either (the generator
  made something up instead of reading or declining).

A gold passage is one the relevance labels name, or, without labels, a passage that holds a gold
answer (``eval.answers.holds_answer``). The weak component is the one behind at least
``SHARE`` of the wrong answers (both, when each is); the action names the tuning recipe.

``prompting`` asks the cheaper question first: does few-shot prompting (icl, rag-icl) already
match or beat fine-tuning (ft, hybrid) on token F1? Each pair is read off the paired bootstrap
interval of the difference the run already computed (prompting − tuned): *beats* when the
interval lies wholly above 0, *matches* when it holds 0, *behind* when it lies below. When a
prompting mode matches or beats the best tuned mode, the recommendation is prompting, not
training (``prefer_prompting`` then makes that the diagnosis' action, the tuning recipe kept
as what to try should prompting not be enough).
Knows nothing of models or of how the answers were made.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from eval.config import demonstrates, needs_adapter

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


PROMPTING_METRIC = "token_f1"


def prompting(
    metrics: dict[str, Any], comparisons: Sequence[dict[str, Any]], modes: Sequence[str]
) -> dict[str, Any] | None:
    """Whether few-shot prompting matches or beats fine-tuning on ``PROMPTING_METRIC``, from the
    run's intervals (``metrics``) and paired differences (``comparisons``, as
    ``eval.stats.summarize`` gives them); None without both an in-context and a tuned mode
    scored."""
    metric = PROMPTING_METRIC
    scored = [m for m in modes if metric in metrics.get(m, {})]
    prompted = [m for m in scored if demonstrates(m)]
    tuned = [m for m in scored if needs_adapter(m) and not demonstrates(m)]
    if not prompted or not tuned:
        return None
    pairs = [p for a in prompted for b in tuned if (p := _pair(comparisons, metric, a, b))]
    if not pairs:
        return None
    best = max(tuned, key=lambda m: metrics[m][metric]["mean"])
    enough = [p for p in pairs if p["tuned"] == best and p["verdict"] != "behind"]
    if enough:
        top = max(enough, key=lambda p: p["mean_diff"])
        recommend = "prompting"
        message = (
            f"few-shot prompting already {top['verdict']} fine-tuning on token F1: "
            f"{_diff(top)}; prompt ({top['prompting']}), do not train"
        )
    else:
        top = max((p for p in pairs if p["tuned"] == best), key=lambda p: p["mean_diff"])
        recommend = "training"
        message = (
            f"fine-tuning ({best}) beats few-shot prompting on token F1: {_diff(top)}; "
            "training pays here"
        )
    return {
        "metric": metric,
        "pairs": pairs,
        "best_tuned": best,
        "recommend": recommend,
        "message": message,
    }


def _pair(
    comparisons: Sequence[dict[str, Any]], metric: str, prompted: str, tuned: str
) -> dict[str, Any] | None:
    """``prompted`` − ``tuned`` on ``metric`` with its interval and verdict, or None."""
    for c in comparisons:
        if c.get("metric") != metric or {c.get("a"), c.get("b")} != {prompted, tuned}:
            continue
        sign = 1.0 if c["b"] == prompted else -1.0  # comparisons hold b - a
        low, high = sorted((sign * c["ci_low"], sign * c["ci_high"]))
        verdict = "beats" if low > 0 else "behind" if high < 0 else "matches"
        return {
            "prompting": prompted,
            "tuned": tuned,
            "mean_diff": sign * c["mean_diff"],
            "ci_low": low,
            "ci_high": high,
            "n": c.get("n"),
            "verdict": verdict,
        }
    return None


def _diff(pair: dict[str, Any]) -> str:
    return (
        f"{pair['prompting']} − {pair['tuned']} {pair['mean_diff']:+.3f} "
        f"[{pair['ci_low']:+.3f}, {pair['ci_high']:+.3f}] ({pair['verdict']})"
    )


def prefer_prompting(diagnosis: dict[str, Any], verdict: dict[str, Any]) -> None:
    """When ``verdict`` recommends prompting, make it the diagnosis' action (in place); the
    tuning action and its commands stay as ``tuning_action``, should prompting not suffice."""
    if verdict.get("recommend") != "prompting":
        return
    diagnosis["tuning_action"] = diagnosis.get("action")
    diagnosis["action"] = f"prompt, do not train: {verdict['message']}"

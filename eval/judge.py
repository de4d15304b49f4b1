"""The optional LLM-judge hook: a function of the user's own that scores an answer in [0, 1].

Off by default. ``ragtune eval --judge my_module:judge`` imports ``judge`` from the user's own
module (local code the user runs, never a name taken from an HTTP request) and calls it once per
answer with keyword arguments ``question``, ``prediction``, ``gold`` (list of answers, or None)
and ``passages`` (texts shown in the prompt, empty for base and ft). Whatever strong model it
asks is its business; its score joins the other metrics (intervals, comparisons, report).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

Judge = Callable[..., float]


def load_judge(spec: str) -> Judge:
    """``module:function`` -> the function (``ValueError`` when it cannot be found)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"judge: expected module:function, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"judge: cannot import {module_name!r}: {exc}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"judge: {module_name} has no function {attr!r}")
    return fn  # type: ignore[no-any-return]


def score(
    judge: Judge, question: str, prediction: str, gold: list[str] | None, passages: list[str]
) -> float:
    value = float(judge(question=question, prediction=prediction, gold=gold, passages=passages))
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"judge: scores must be in [0, 1], got {value}")
    return value


def describe(spec: str) -> dict[str, Any]:
    return {"function": spec, "metric": "judge", "scale": "0..1, higher is better"}

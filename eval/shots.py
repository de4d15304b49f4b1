"""Demonstrations for the in-context modes (icl, rag-icl): the question/answer pairs each asked
question's prompt shows before it.

The pool is the dataset's training split (``EvalSet.train``, questions with a gold answer) or
pairs synthesised from the indexed documents (``tuner.synth.extractive_pairs`` over the index's
chunks, the same rules the RAFT data is mined with); ``auto`` takes the training split when the
dataset has one. A pair whose normalised question (``tuner.synth.normalize``) equals one the
run asks is left out of the pool, so no prompt shows an asked question, or its gold answer, as
a demonstration. Each question then gets ``shots`` pairs, the preferred first: the nearest by
the run's embedder (cosine of the question embeddings; the embedder of the index the run
retrieves from), or a sample seeded by the run's seed and the question's place.

How demonstrations sit in the prompt and share its token budget is ``eval.systems``'s; this
module knows nothing of prompts, budgets or generation, only of an ``encode`` function.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from eval.config import EvalOptions, demonstrates
from eval.datasets.formats import EvalSet
from tuner.synth import normalize

if TYPE_CHECKING:
    from retriever.index import Retriever
    from service.settings import Settings

log = logging.getLogger(__name__)
POOL_MAX = 1000  # synthesised pairs kept as candidates
Encode = Callable[[list[str]], np.ndarray]
_NO_INDEX = (
    "--shots-from synth needs the documents' index, which this run does not open (its "
    "retrieval was precomputed); use --shots-from train with a dataset that has a training split"
)


class ShotError(ValueError):
    """The demonstrations cannot be drawn as asked (no training split, no pairs left...)."""


@dataclass(frozen=True)
class Shot:
    """One demonstration: a question, its answer, and where it came from."""

    question: str
    answer: str
    source: str  # "train:<question id>" | "synth:<document id>"


@dataclass
class Shots:
    """Each asked question's demonstrations (preferred first) and how they were drawn."""

    per_question: list[list[Shot]]
    info: dict[str, Any] = field(default_factory=dict)


def wanted(options: EvalOptions) -> bool:
    """Whether the run has an in-context mode."""
    return any(demonstrates(m) for m in options.modes)


def source_of(options: EvalOptions, evalset: EvalSet) -> str:
    """``train`` or ``synth``: ``auto`` is train when the dataset has a training split with
    answers; ``train`` without one is a ``ShotError``."""
    has_train = any(q.answers for q in evalset.train)
    if options.shots_from == "auto":
        return "train" if has_train else "synth"
    if options.shots_from == "train" and not has_train:
        raise ShotError(
            f"--shots-from train: {evalset.path} has no training split with answers (a BEIR "
            "qrels/train.tsv naming queries with an 'answer', or JSONL rows with "
            '"split": "train"); use --shots-from synth'
        )
    return options.shots_from


def check(options: EvalOptions, evalset: EvalSet) -> None:
    """Raise ``ShotError`` now, before any model loads, when the demonstrations cannot be
    drawn as asked."""
    if wanted(options) and source_of(options, evalset) == "synth" and options.retrieved:
        raise ShotError(_NO_INDEX)


def needs_index(options: EvalOptions, evalset: EvalSet) -> bool:
    """Whether drawing the demonstrations needs the index (its chunks or its embedder)."""
    if not wanted(options):
        return False
    return source_of(options, evalset) == "synth" or options.shot_choice == "similar"


def draw(
    options: EvalOptions,
    evalset: EvalSet,
    index: Retriever | None,
    settings: Settings | None = None,
) -> Shots:
    """The run's demonstrations. ``index`` is the one the run retrieves from (None when the
    retrieval was precomputed elsewhere: synthesis then cannot run, and the similarity uses the
    index's embedder loaded from ``settings``)."""
    source = source_of(options, evalset)
    if source == "train":
        pool = [Shot(q.text, q.answers[0], f"train:{q.id}") for q in evalset.train if q.answers]
    elif index is None:
        raise ShotError(_NO_INDEX)
    else:
        pool = synthesised(index, options.seed)
    asked = [q.text for q in evalset.questions]
    kept = exclude(pool, asked)
    if not kept:
        raise ShotError(
            f"icl: no demonstrations left from {source} ({len(pool)} pairs, all of them asked "
            "by the run or none found); use the other --shots-from"
        )
    encode = None
    if options.shot_choice == "similar":
        encode = index.embedder.encode if index is not None else _embedder(options, settings)
    per_question = choose(kept, asked, options.shots, options.shot_choice, options.seed, encode)
    info = {
        "n": options.shots,
        "from": source,
        "choice": options.shot_choice,
        "pool": len(kept),
        "excluded": len(pool) - len(kept),
    }
    log.info("demonstrations: %(pool)d from %(from)s (%(excluded)d left out as asked)", info)
    return Shots(per_question, info)


def synthesised(index: Retriever, seed: int) -> list[Shot]:
    """Question/answer pairs mined from every chunk of ``index`` (``tuner.synth``)."""
    from tuner.synth import extractive_pairs, index_chunks

    pairs = extractive_pairs(index_chunks(index), POOL_MAX, seed=seed)
    return [Shot(p.question, p.answer, f"synth:{p.doc_id}") for p in pairs]


def exclude(pool: Sequence[Shot], asked: Sequence[str]) -> list[Shot]:
    """``pool`` less every pair whose normalised question equals an asked one (and less
    repeats of one normalised question, the first kept)."""
    seen = {normalize(q) for q in asked}
    kept = []
    for shot in pool:
        key = normalize(shot.question)
        if key and key not in seen and shot.answer.strip():
            seen.add(key)
            kept.append(shot)
    return kept


def choose(
    pool: Sequence[Shot],
    asked: Sequence[str],
    n: int,
    how: str,
    seed: int,
    encode: Encode | None = None,
) -> list[list[Shot]]:
    """Each asked question's ``n`` demonstrations (fewer when the pool is smaller), preferred
    first: ``similar`` by cosine of ``encode``'s question vectors (ties in pool order),
    ``random`` a sample seeded by ``seed`` and the question's place. A pair whose normalised
    question is the asked one is never chosen."""
    if how not in ("similar", "random"):
        raise ShotError(f"shot_choice: choose from similar, random; got {how!r}")
    if how == "random":
        size = min(len(pool), n + 1)  # one spare, should the asked question be in the pool
        picked = [
            random.Random(f"{seed}:{i}").sample(range(len(pool)), size) for i in range(len(asked))
        ]
    else:
        if encode is None:
            raise ShotError("shot_choice similar needs an embedder")
        picked = _nearest(pool, asked, encode, n + 1)
    out = []
    for question, order in zip(asked, picked, strict=True):
        own = normalize(question)
        out.append([pool[j] for j in order if normalize(pool[j].question) != own][:n])
    return out


def _nearest(
    pool: Sequence[Shot], asked: Sequence[str], encode: Encode, top: int
) -> list[list[int]]:
    """Per asked question, the ``top`` nearest of the pool's indices, nearest first."""
    candidates = _unit(encode([s.question for s in pool]))  # (pool, dim)
    queries = _unit(encode(list(asked)))  # (asked, dim)
    similarity = queries @ candidates.T  # (asked, pool)
    return [[int(j) for j in np.argsort(-row, kind="stable")[:top]] for row in similarity]


def _unit(vectors: Any) -> np.ndarray:
    array = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.maximum(norms, 1e-12)


def _embedder(options: EvalOptions, settings: Settings | None) -> Encode:
    """The encode function of the embedder the run's index uses, loaded from ``settings``."""
    from service.loading import index_embedder, tuned_embedder

    if settings is None:
        raise ShotError("shot_choice similar needs the run's embedder")
    adapter = options.embedder_adapter
    embedder = tuned_embedder(adapter, settings) if adapter else index_embedder(settings)
    return embedder.encode  # type: ignore[no-any-return]

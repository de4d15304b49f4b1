"""Training examples from question/answer pairs: RAFT-style and closed-book chat examples.

``raft_examples`` builds each example with the exact prompt the service asks with
(``tuner.prompts.rag_messages``): the gold chunk in a random position with probability
``p_gold`` among distractors retrieved for the question. ``closed_book_examples`` uses
``tuner.prompts.base_messages``. ``synthesize`` is a ``SyntheticSpec``'s whole recipe: pairs from
every chunk of the index (``tuner.synth``), then examples of its kind. Everything is
deterministic given the seed.

Knows nothing of how the index searches (a ``search`` callable is given), of models beyond the
generator handed to ``synthesize``, or of any evaluation set.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tuner.config import SyntheticSpec
from tuner.data import Example
from tuner.prompts import base_messages, rag_messages
from tuner.sentences import sentences
from tuner.synth import QAPair, extractive_pairs, index_chunks, model_pairs

ABSENT_ANSWERS = ("answer", "unknown")
UNKNOWN = "I do not know: the passages do not say."


@dataclass(frozen=True)
class _Passage:
    chunk_id: int
    doc_id: str
    text: str


def raft_examples(
    pairs: Sequence[QAPair],
    search: Callable[[str, int], Sequence[Any]],
    distractors: int = 3,
    p_gold: float = 0.8,
    seed: int = 42,
    *,
    when_absent: str = "answer",
    answer_words: int = 0,
) -> list[Example]:
    """RAFT examples: the serving prompt with distractors retrieved for the question and, with
    probability ``p_gold``, the gold chunk at a random position among them.

    Distractors are hits that are neither the gold chunk nor hold the answer sentence (a
    neighbouring chunk can share it through overlap). Without the gold passage the assistant
    still gives the answer (``when_absent="answer"``, as RAFT does: it learns the domain) or
    says the passages do not say (``"unknown"``, what the serving system prompt asks for).
    """
    if when_absent not in ABSENT_ANSWERS:
        raise ValueError(f"when_absent must be one of {ABSENT_ANSWERS}, got {when_absent!r}")
    rng = random.Random(seed)
    out = []
    for pair in pairs:
        if not pair.context:
            raise ValueError(f"pair {pair.question!r} has no context (its chunk's text)")
        with_gold = rng.random() < p_gold
        passages: list[Any] = _distractors(pair, search, distractors)
        gold_at = None
        if with_gold:
            gold_at = rng.randint(0, len(passages))
            passages.insert(gold_at, _Passage(pair.chunk_id, pair.doc_id, pair.context))
        full = extend_answer(pair.answer, pair.context, answer_words)
        answer = full if with_gold or when_absent == "answer" else UNKNOWN
        messages = rag_messages(pair.question, passages)
        messages.append({"role": "assistant", "content": answer})
        meta = _meta(pair, "raft")
        meta.update(
            gold_in_prompt=with_gold,
            gold_position=gold_at,
            passage_chunk_ids=[p.chunk_id for p in passages],
            passage_doc_ids=[p.doc_id for p in passages],
        )
        out.append(Example(messages=messages, meta=meta))
    return out


def extend_answer(answer: str, context: str, words: int) -> str:
    """``answer`` and the sentences that follow it in ``context`` until the reply has about
    ``words`` words (0: the answer sentence alone), so the model learns to give the passage's
    explanation, not one line of it."""
    if words <= 0:
        return answer
    parts = sentences(context, prose=True)
    key = " ".join(answer.split())
    at = next((i for i, s in enumerate(parts) if " ".join(s.split()) == key), None)
    if at is None:
        return answer
    reply = [parts[at]]
    for s in parts[at + 1 :]:
        if sum(len(r.split()) for r in reply) >= words:
            break
        reply.append(s)
    return " ".join(reply)


def _distractors(pair: QAPair, search: Callable[[str, int], Sequence[Any]], n: int) -> list[Any]:
    if n == 0:
        return []
    key = " ".join(pair.answer.split())
    found = []
    for hit in search(pair.question, n + 4):
        if hit.chunk_id == pair.chunk_id or key in " ".join(hit.text.split()):
            continue
        found.append(hit)
        if len(found) == n:
            break
    return found


def closed_book_examples(pairs: Sequence[QAPair]) -> list[Example]:
    """Question -> answer with no passages (the base/ft prompt)."""
    out = []
    for pair in pairs:
        messages = base_messages(pair.question)
        messages.append({"role": "assistant", "content": pair.answer})
        out.append(Example(messages=messages, meta=_meta(pair, "closed_book")))
    return out


def _meta(pair: QAPair, kind: str) -> dict[str, Any]:
    return {
        "source": "synthetic",
        "kind": kind,
        "method": pair.method,
        "source_chunk_ids": [pair.chunk_id],
        "doc_ids": [pair.doc_id],
    }


def synthesize(retriever: Any, spec: SyntheticSpec, generator: Any = None) -> list[Example]:
    """Examples of ``spec.kind`` made from every chunk of ``retriever``'s index.

    kind raft: ``raft_examples`` with the retriever's default search; qa and closed_book:
    ``closed_book_examples``. generator "model" needs a loaded ``generator``.
    """
    chunks = index_chunks(retriever)
    if spec.generator == "model":
        if generator is None:
            raise ValueError("synthetic.generator=model needs a loaded generator")
        pairs = model_pairs(chunks, generator, spec.max_examples, spec.seed)
    else:
        pairs = extractive_pairs(chunks, spec.max_examples, spec.seed)
    if spec.kind == "raft":
        return raft_examples(
            pairs,
            lambda q, k: retriever.search(q, k),
            spec.distractors,
            spec.p_gold,
            spec.seed,
            answer_words=spec.answer_words,
        )
    return closed_book_examples(pairs)

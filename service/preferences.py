"""Preference rows from the ratings users gave answers: the answer log turned into kto rows or
dpo pairs, each prompt rebuilt exactly as it was served.

An answer's record holds its messages, mode and the passages it was shown (document, span and
the SHA-256 of the text). The prompt is rebuilt with the pipeline's own ``prompt`` from the
document text at those spans, and accepted only when the text's hash and then the whole
prompt's hash match what was logged: training sees what the user saw, or the rating is left
out and counted under a reason (stale passages, a deleted document, an expired record, ...).

- kto: each rated answer is a row labelled by its rating (ratings of one answer that disagree
  leave it out); a correction is a desirable row of its own.
- dpo: a correction is chosen over the answer it corrects; answers to the same prompt rated up
  and down make pairs (at most ``preference.max_pairs_per_question`` per prompt).

An answer a token limit cut off (finish reason ``length``) is marked ``cut``, and so is a
correction that keeps the cut answer's last words: they train without an end of turn.

A rating's id is ``<answer id>:<key name>``; the ids used go into the adapter's registry record.
Knows nothing of HTTP; the tuner trains on what this returns.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from retriever.errors import DocumentNotFound
from service.answerlog import AnswerLog, prompt_sha256, sha256
from service.pipeline import MODES, prompt
from tuner.config import FeedbackSpec, Recipe
from tuner.preference_data import PreferenceRow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Passage:
    doc_id: str
    text: str


class Stale(Exception):
    """The prompt an answer was served with cannot be rebuilt; the message is the reason."""


def rebuild(answer: dict[str, Any], retriever: Any) -> list[dict[str, str]]:
    """The prompt ``answer`` was served with, from the documents as they are now; ``Stale``
    when a passage's text or the prompt's hash no longer matches the log."""
    passages = []
    docs: dict[str, Any] = {}
    for p in answer["passages"]:
        if retriever is None:
            raise Stale("the document index is not open")
        doc_id = p["doc_id"]
        if doc_id not in docs:
            try:
                docs[doc_id] = retriever.get(doc_id)
            except DocumentNotFound:
                raise Stale("a passage's document was deleted") from None
        text = docs[doc_id].text[p["start"] : p["end"]]
        if sha256(text) != p["sha256"]:
            raise Stale("a passage's document changed")
        passages.append(_Passage(doc_id, text))
    mode = MODES.get(answer["mode"])
    if mode is None:
        raise Stale(f"unknown mode {answer['mode']!r}")
    shown: Any = passages  # a prompt reads only doc_id and text of a hit
    messages = prompt(mode, answer["messages"], shown)
    if prompt_sha256(messages) != answer["prompt_sha256"]:
        raise Stale("the rebuilt prompt differs from the one served")
    if not messages or messages[-1]["role"] != "user":
        raise Stale("the chat ended with an assistant turn (a continuation, not an answer)")
    return messages


def ratings(answers: AnswerLog, since: float | None) -> list[dict[str, Any]]:
    """Every rating (with its answer's record), read in one query: a rating given while this
    reads can neither be skipped nor read twice."""
    _, rows = answers.feedback(since=since, limit=-1)  # SQLite: LIMIT -1 is no limit
    return rows


def collect(
    answers: AnswerLog, retriever: Any, spec: FeedbackSpec, recipe: Recipe
) -> tuple[list[PreferenceRow], dict[str, Any]]:
    """(rows for ``recipe.method``, {"feedback_ids": used, "skipped": {reason: count}})."""
    skipped: Counter[str] = Counter()
    by_answer: dict[str, list[dict[str, Any]]] = {}
    records: dict[str, dict[str, Any]] = {}
    for item in ratings(answers, spec.since):
        record = item.get("answer")
        if record is None:
            skipped["the answer's record expired"] += 1
            continue
        by_answer.setdefault(item["answer_id"], []).append(item)
        records[item["answer_id"]] = record
    prompts: dict[str, list[dict[str, str]]] = {}
    for answer_id, record in records.items():
        try:
            prompts[answer_id] = rebuild(record, retriever)
        except Stale as exc:
            skipped[str(exc)] += len(by_answer[answer_id])
    if recipe.method == "kto":
        rows = _kto(by_answer, records, prompts, spec, skipped)
    else:
        rows = _dpo(by_answer, records, prompts, spec, recipe, skipped)
    used = sorted({i for r in rows for i in r.meta["feedback_ids"]})
    if skipped:
        log.info(
            "feedback: %d rows from %d ratings; left out %s", len(rows), len(used), dict(skipped)
        )
    return rows, {"feedback_ids": used, "skipped": dict(skipped)}


def _id(item: dict[str, Any]) -> str:
    return f"{item['answer_id']}:{item['key_name']}"


def _kto(
    by_answer: dict[str, list[dict[str, Any]]],
    records: dict[str, dict[str, Any]],
    prompts: dict[str, list[dict[str, str]]],
    spec: FeedbackSpec,
    skipped: Counter[str],
) -> list[PreferenceRow]:
    rows: dict[str, PreferenceRow] = {}

    def add(row: PreferenceRow) -> None:
        before = rows.get(row.key())
        if before is None:
            rows[row.key()] = row
        else:
            before.meta["feedback_ids"] += row.meta["feedback_ids"]

    for answer_id, items in by_answer.items():
        if answer_id not in prompts:
            continue
        shown, text = prompts[answer_id], records[answer_id]["answer"]
        labels = {i["rating"] for i in items}
        if len(labels) > 1:
            skipped["ratings of one answer disagree"] += len(items)
        elif not text.strip():
            skipped["the answer was empty"] += len(items)
        else:
            ids = [_id(i) for i in items]
            meta = _meta(answer_id, ids, records[answer_id]["prompt_tokens"])
            cut = _sides(completion=cut_off(records[answer_id]))
            add(PreferenceRow(shown, text, labels == {"up"}, meta=meta, cut=cut))
        for item in items:
            correction = item.get("correction")
            if spec.corrections and correction and correction.strip() != text.strip():
                meta = _meta(answer_id, [_id(item)], records[answer_id]["prompt_tokens"])
                cut = _sides(completion=cut_off(records[answer_id], correction))
                add(PreferenceRow(shown, correction, True, meta=meta, cut=cut))
    return list(rows.values())


def _dpo(
    by_answer: dict[str, list[dict[str, Any]]],
    records: dict[str, dict[str, Any]],
    prompts: dict[str, list[dict[str, str]]],
    spec: FeedbackSpec,
    recipe: Recipe,
    skipped: Counter[str],
) -> list[PreferenceRow]:
    rows: dict[str, PreferenceRow] = {}
    groups: dict[str, dict[str, list[tuple[str, str, list[str]]]]] = {}
    for answer_id, items in by_answer.items():
        if answer_id not in prompts:
            continue
        text = records[answer_id]["answer"]
        key = records[answer_id]["prompt_sha256"]
        for item in items:
            correction = item.get("correction")
            if spec.corrections and correction and correction.strip() != text.strip():
                record = records[answer_id]
                row = PreferenceRow(
                    prompts[answer_id],
                    chosen=correction,
                    rejected=text,
                    meta=_meta(answer_id, [_id(item)], record["prompt_tokens"]),
                    cut=_sides(chosen=cut_off(record, correction), rejected=cut_off(record)),
                )
                rows.setdefault(row.key(), row)
        labels = {i["rating"] for i in items}
        if len(labels) == 1 and text.strip():
            side = groups.setdefault(key, {"up": [], "down": []})[labels.pop()]
            side.append((answer_id, text, [_id(i) for i in items]))
    cap = recipe.preference.max_pairs_per_question
    rng = random.Random(recipe.hyperparameters.seed)
    for sides in groups.values():
        pairs = [(u, d) for u, d in itertools.product(sides["up"], sides["down"]) if u[1] != d[1]]
        rng.shuffle(pairs)  # a cap that takes the first pairs would repeat one up-rated answer
        for up, down in pairs[:cap]:
            row = PreferenceRow(
                prompts[up[0]],
                chosen=up[1],
                rejected=down[1],
                meta={
                    "answer_ids": [up[0], down[0]],
                    "feedback_ids": up[2] + down[2],
                    "prompt_tokens": records[up[0]]["prompt_tokens"],
                },
                cut=_sides(chosen=cut_off(records[up[0]]), rejected=cut_off(records[down[0]])),
            )
            rows.setdefault(row.key(), row)
    paired = {i for r in rows.values() for i in r.meta["feedback_ids"]}
    unpaired = sum(
        1
        for answer_id, items in by_answer.items()
        if answer_id in prompts
        for i in items
        if _id(i) not in paired
    )
    if unpaired:
        skipped["no pair (a correction, or an opposite rating of the same prompt)"] += unpaired
    return list(rows.values())


KEPT_WORDS = 3  # a correction ending in the cut answer's last words is cut there too


def cut_off(record: dict[str, Any], correction: str | None = None) -> bool:
    """Whether the answer (or ``correction`` of it) ends where a token limit cut it off."""
    if record.get("finish_reason") != "length":
        return False
    if correction is None:
        return True
    tail = record["answer"].split()[-KEPT_WORDS:]
    return bool(tail) and correction.split()[-KEPT_WORDS:] == tail


def _sides(**cut: bool) -> tuple[str, ...]:
    """The sides of a row that are cut, as ``PreferenceRow.cut`` holds them."""
    return tuple(side for side, is_cut in cut.items() if is_cut)


def _meta(answer_id: str, ids: list[str], prompt_tokens: int | None) -> dict[str, Any]:
    return {"answer_ids": [answer_id], "feedback_ids": list(ids), "prompt_tokens": prompt_tokens}

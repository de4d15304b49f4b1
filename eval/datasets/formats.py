"""Read evaluation sets: BEIR folders, SQuAD-style JSONL, and plain question/answer JSONL.

Every reader returns an ``EvalSet``: the questions (id, text, gold answers, gold passages) and,
when the set carries one, the corpus to index. A plain Q/A file has no corpus: it is asked
against the live index. Bad input raises ``DatasetError`` naming the file and line.
Knows nothing of models, indexes or metrics.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retriever.validation import check_id


class DatasetError(ValueError):
    """The evaluation data cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class Question:
    id: str
    text: str
    answers: tuple[str, ...] = ()  # gold answers (any one counts); empty: no answer metrics
    gold_docs: frozenset[str] = frozenset()  # relevant document ids; empty: no qrels


@dataclass(frozen=True)
class Doc:
    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalSet:
    kind: str  # beir | squad | qa
    path: Path
    questions: list[Question]
    corpus: list[Doc] | None  # None: ask against the live index

    @property
    def has_answers(self) -> bool:
        return any(q.answers for q in self.questions)

    @property
    def has_qrels(self) -> bool:
        return any(q.gold_docs for q in self.questions)

    def limited(self, n: int | None) -> EvalSet:
        return self if n is None else EvalSet(self.kind, self.path, self.questions[:n], self.corpus)


def load(path: Path, live: bool = False) -> EvalSet:
    """A BEIR folder, or a JSONL file: SQuAD-style rows (with ``context``) or, with ``live``,
    plain question/answer rows."""
    path = Path(path)
    if path.is_dir():
        if live:
            raise DatasetError(f"{path}: --live takes a question/answer JSONL file, not a folder")
        return load_beir(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file or folder")
    rows = _jsonl(path)
    if not rows:
        raise DatasetError(f"{path}: no rows")
    if "context" in rows[0][1]:
        if live:
            raise DatasetError(f"{path}: SQuAD-style rows carry their contexts; drop --live")
        return load_squad(path, rows)
    if not live:
        raise DatasetError(
            f"{path}: rows have no 'context': a plain question/answer file is asked against "
            "the live index (add --live), or give a BEIR folder or SQuAD-style JSONL"
        )
    return load_qa(path, rows)


def _jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) of every non-blank line; the first bad line is an error."""
    from tuner.data import jsonl_records

    records, problems = jsonl_records(path)
    if problems:
        line, why = problems[0]
        raise DatasetError(f"{path}:{line}: {why}")
    return records


def _text(row: dict[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(f"{where}: '{key}' must be a non-empty string")
    return value


def _answers(value: Any, where: str) -> tuple[str, ...]:
    """``"a"``, ``["a", "b"]`` or SQuAD's ``{"text": [...], "answer_start": [...]}``."""
    if value is None:
        return ()
    if isinstance(value, dict):
        value = value.get("text", [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise DatasetError(f"{where}: answers must be a string or a list of strings")
    return tuple(dict.fromkeys(a.strip() for a in value if a.strip()))


def load_beir(folder: Path) -> EvalSet:
    """``corpus.jsonl``, ``queries.jsonl`` (optional ``answer``) and ``qrels/test.tsv``."""
    for name in ("corpus.jsonl", "queries.jsonl"):
        if not (folder / name).is_file():
            raise DatasetError(f"{folder}: not a BEIR folder (no {name})")
    corpus = []
    for n, row in _jsonl(folder / "corpus.jsonl"):
        where = f"{folder / 'corpus.jsonl'}:{n}"
        text, title = _text(row, "text", where), row.get("title") or ""
        meta = dict(row.get("metadata") or {}, **({"title": title} if title else {}))
        corpus.append(Doc(_id(row.get("_id"), where, "_id"), text, meta))
    qrels = _qrels(folder / "qrels" / "test.tsv")
    questions = []
    for n, row in _jsonl(folder / "queries.jsonl"):
        where = f"{folder / 'queries.jsonl'}:{n}"
        qid = _id(row.get("_id"), where, "_id")
        answers = _answers(row.get("answer", row.get("answers")), where)
        questions.append(
            Question(qid, _text(row, "text", where), answers, qrels.get(qid, frozenset()))
        )
    if qrels:  # BEIR evaluates the judged queries only
        questions = [q for q in questions if q.gold_docs]
    if not questions:
        raise DatasetError(f"{folder}: no queries with relevance judgements")
    return EvalSet("beir", folder, questions, corpus)


def _missing(where: str, key: str) -> str:
    raise DatasetError(f"{where}: '{key}' is missing")


def _id(value: Any, where: str, key: str) -> str:
    """An id field as the index takes it (printable, at most 256 characters)."""
    if value is None or value == "":
        _missing(where, key)
    try:
        return check_id(str(value), key)
    except ValueError as exc:
        raise DatasetError(f"{where}: {exc}") from None


def _qrels(path: Path) -> dict[str, frozenset[str]]:
    if not path.is_file():
        return {}
    found: dict[str, set[str]] = {}
    with path.open(encoding="utf-8", newline="") as f:
        for n, cells in enumerate(csv.reader(f, delimiter="\t"), 1):
            if n == 1 and cells[:1] == ["query-id"]:
                continue
            if len(cells) < 3:
                raise DatasetError(f"{path}:{n}: expected query-id, corpus-id, score")
            try:
                relevant = float(cells[2]) > 0
            except ValueError:
                raise DatasetError(f"{path}:{n}: score {cells[2]!r} is not a number") from None
            if relevant:
                found.setdefault(cells[0], set()).add(cells[1])
    return {q: frozenset(d) for q, d in found.items()}


def load_squad(path: Path, rows: list[tuple[int, dict[str, Any]]]) -> EvalSet:
    """One row per question with its ``context``; identical contexts become one document."""
    docs: dict[str, Doc] = {}
    questions = []
    for n, row in rows:
        where = f"{path}:{n}"
        context = _text(row, "context", where)
        doc_id = _id(
            row.get("context_id") or "ctx-" + hashlib.sha1(context.encode()).hexdigest()[:12],
            where,
            "context_id",
        )
        meta = {"title": row["title"]} if isinstance(row.get("title"), str) else {}
        docs.setdefault(doc_id, Doc(doc_id, context, meta))
        answers = _answers(row.get("answers", row.get("answer")), where)
        qid = _id(row.get("id") or f"q{n}", where, "id")
        questions.append(Question(qid, _text(row, "question", where), answers, frozenset({doc_id})))
    _unique_ids(questions, path)
    return EvalSet("squad", path, questions, list(docs.values()))


def load_qa(path: Path, rows: list[tuple[int, dict[str, Any]]]) -> EvalSet:
    """``question`` with ``answer``/``answers`` and optional ``id`` and ``doc_ids``."""
    questions = []
    for n, row in rows:
        where = f"{path}:{n}"
        doc_ids = row.get("doc_ids") or []
        if not isinstance(doc_ids, list) or not all(isinstance(d, str) for d in doc_ids):
            raise DatasetError(f"{where}: 'doc_ids' must be a list of document ids")
        answers = _answers(row.get("answers", row.get("answer")), where)
        qid = _id(row.get("id") or f"q{n}", where, "id")
        questions.append(Question(qid, _text(row, "question", where), answers, frozenset(doc_ids)))
    _unique_ids(questions, path)
    return EvalSet("qa", path, questions, None)


def _unique_ids(questions: list[Question], path: Path) -> None:
    seen: set[str] = set()
    for q in questions:
        if q.id in seen:
            raise DatasetError(f"{path}: question id {q.id!r} appears twice")
        seen.add(q.id)

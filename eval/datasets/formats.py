"""Read evaluation sets: BEIR folders, SQuAD-style JSONL, and plain question/answer JSONL.

Every reader returns an ``EvalSet``: the questions (id, text, gold answers, gold passages), the
training split when the set has one (BEIR ``qrels/train.tsv``; JSONL rows with ``"split":
"train"``), never asked, the demonstrations of the in-context modes, and, when the set carries
one, the corpus to index. A plain Q/A file has no corpus: it is asked
against the live index. JSONL is read with ``retriever.jsonl`` (lines split on ``\n`` only). Bad
input raises one ``DatasetError`` naming the file and line of every bad row (up to
``SHOWN_PROBLEMS``), not only the first.
Knows nothing of models, indexes or metrics.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from retriever import jsonl
from retriever.validation import check_id

T = TypeVar("T")


SHOWN_PROBLEMS = 100  # bad lines kept on one DatasetError, as /v1/files lists in one 422

Problem = tuple[str, int, str]  # (file, line, reason)


class DatasetError(ValueError):
    """The evaluation data cannot be read. The message's first line names the file and line of
    the first problem (and how many more there are); ``problems`` lists every bad line as
    (file, line, reason), up to ``SHOWN_PROBLEMS``."""

    def __init__(self, message: str, problems: list[Problem] | None = None) -> None:
        self.problems = (problems or [])[:SHOWN_PROBLEMS]
        super().__init__(message)


class _Bad(Exception):
    """One row's problem, raised by the field checks and collected with the row's line."""


def _raise_any(problems: list[Problem]) -> None:
    """Raise one ``DatasetError`` listing every problem, in file and line order."""
    if not problems:
        return
    first = {file: i for i, (file, _, _) in reversed(list(enumerate(problems)))}
    problems = sorted(problems, key=lambda p: (first[p[0]], p[1]))
    lines = [f"{file}:{line}: {reason}" for file, line, reason in problems[:SHOWN_PROBLEMS]]
    more = len(problems) - 1
    if more:
        lines[0] += f" (and {more} more bad lines)"
    raise DatasetError("\n".join(lines), problems)


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
    train: list[Question] = field(default_factory=list)  # the training split, never asked

    @property
    def has_answers(self) -> bool:
        return any(q.answers for q in self.questions)

    @property
    def has_qrels(self) -> bool:
        return any(q.gold_docs for q in self.questions)

    def limited(self, n: int | None) -> EvalSet:
        if n is None:
            return self
        return EvalSet(self.kind, self.path, self.questions[:n], self.corpus, self.train)


def load(path: Path, live: bool = False) -> EvalSet:
    """A BEIR folder, or a JSONL file: SQuAD-style rows (with ``context``) or, with ``live``,
    plain question/answer rows. Every bad line is reported at once (``DatasetError``)."""
    path = Path(path)
    if path.is_dir():
        if live:
            raise DatasetError(f"{path}: --live takes a question/answer JSONL file, not a folder")
        return load_beir(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file or folder")
    problems: list[Problem] = []
    rows = _rows(path, problems)
    if not rows:
        _raise_any(problems)
        raise DatasetError(f"{path}: no rows")
    if "context" in rows[0][1]:
        if live:
            raise DatasetError(f"{path}: SQuAD-style rows carry their contexts; drop --live")
        return load_squad(path, rows, problems)
    if not live:
        raise DatasetError(
            f"{path}: rows have no 'context': a plain question/answer file is asked against "
            "the live index (add --live), or give a BEIR folder or SQuAD-style JSONL"
        )
    return load_qa(path, rows, problems)


def _rows(path: Path, problems: list[Problem]) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) of every JSON object line; the other lines go to ``problems``."""
    rows, bad = jsonl.records(jsonl.read_path(path))
    problems += [(str(path), line, why) for line, why in bad]
    return rows


def _each(
    path: Path,
    rows: list[tuple[int, dict[str, Any]]],
    problems: list[Problem],
    make: Callable[[int, dict[str, Any]], T],
) -> list[T]:
    """``make(line, row)`` of every row; a row whose check fails goes to ``problems``."""
    out = []
    for n, row in rows:
        try:
            out.append(make(n, row))
        except _Bad as exc:
            problems.append((str(path), n, str(exc)))
    return out


def _text(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f"'{key}' must be a non-empty string")
    return value


def _answers(value: Any) -> tuple[str, ...]:
    """``"a"``, ``["a", "b"]`` or SQuAD's ``{"text": [...], "answer_start": [...]}``."""
    if value is None:
        return ()
    if isinstance(value, dict):
        value = value.get("text", [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise _Bad("answers must be a string or a list of strings")
    return tuple(dict.fromkeys(a.strip() for a in value if a.strip()))


def _id(value: Any, key: str) -> str:
    """An id field as the index takes it (``retriever.validation.check_id``)."""
    if value is None or value == "":
        raise _Bad(f"'{key}' is missing")
    try:
        return check_id(str(value), key)
    except ValueError as exc:
        raise _Bad(str(exc)) from None


def load_beir(folder: Path) -> EvalSet:
    """``corpus.jsonl``, ``queries.jsonl`` (optional ``answer``) and ``qrels/test.tsv``; the
    queries ``qrels/train.tsv`` names (when there is one) are the training split."""
    for name in ("corpus.jsonl", "queries.jsonl"):
        if not (folder / name).is_file():
            raise DatasetError(f"{folder}: not a BEIR folder (no {name})")
    problems: list[Problem] = []
    corpus_path, queries_path = folder / "corpus.jsonl", folder / "queries.jsonl"
    corpus = _each(corpus_path, _rows(corpus_path, problems), problems, _beir_doc)
    query_rows = _rows(queries_path, problems)
    qrels = _qrels(folder / "qrels" / "test.tsv", problems)
    train_qrels = _qrels(folder / "qrels" / "train.tsv", problems)

    def question(n: int, row: dict[str, Any]) -> Question:
        qid = _id(row.get("_id"), "_id")
        answers = _answers(row.get("answer", row.get("answers")))
        gold = qrels.get(qid) or train_qrels.get(qid) or frozenset()
        return Question(qid, _text(row, "text"), answers, gold)

    every = _each(queries_path, query_rows, problems, question)
    _raise_any(problems)
    train = [q for q in every if q.id in train_qrels and q.id not in qrels]
    questions = [q for q in every if q.id not in train_qrels or q.id in qrels]
    if qrels:  # BEIR evaluates the judged queries only
        questions = [q for q in questions if q.id in qrels]
    if not questions:
        raise DatasetError(f"{folder}: no queries with relevance judgements")
    return EvalSet("beir", folder, questions, corpus, train)


def _beir_doc(n: int, row: dict[str, Any]) -> Doc:
    text, title = _text(row, "text"), row.get("title") or ""
    meta = dict(row.get("metadata") or {}, **({"title": title} if title else {}))
    return Doc(_id(row.get("_id"), "_id"), text, meta)


def _qrels(path: Path, problems: list[Problem]) -> dict[str, frozenset[str]]:
    if not path.is_file():
        return {}
    found: dict[str, set[str]] = {}
    with path.open(encoding="utf-8", newline="") as f:
        for n, cells in enumerate(csv.reader(f, delimiter="\t"), 1):
            if n == 1 and cells[:1] == ["query-id"]:
                continue
            if len(cells) < 3:
                problems.append((str(path), n, "expected query-id, corpus-id, score"))
                continue
            try:
                relevant = float(cells[2]) > 0
            except ValueError:
                problems.append((str(path), n, f"score {cells[2][:40]!r} is not a number"))
                continue
            if relevant:
                found.setdefault(cells[0], set()).add(cells[1])
    return {q: frozenset(d) for q, d in found.items()}


def load_squad(
    path: Path, rows: list[tuple[int, dict[str, Any]]], problems: list[Problem] | None = None
) -> EvalSet:
    """One row per question with its ``context``; identical contexts become one document."""
    problems = [] if problems is None else problems
    docs: dict[str, Doc] = {}

    def question(n: int, row: dict[str, Any]) -> Question:
        context = _text(row, "context")
        default = "ctx-" + hashlib.sha1(context.encode()).hexdigest()[:12]
        doc_id = _id(row.get("context_id") or default, "context_id")
        answers = _answers(row.get("answers", row.get("answer")))
        qid, text = _id(row.get("id") or f"q{n}", "id"), _text(row, "question")
        meta = {"title": row["title"]} if isinstance(row.get("title"), str) else {}
        docs.setdefault(doc_id, Doc(doc_id, context, meta))
        return Question(qid, text, answers, frozenset({doc_id}))

    questions, train = _split(path, rows, problems, question)
    _raise_any(problems)
    _unique_ids([*questions, *train], path)
    return EvalSet("squad", path, questions, list(docs.values()), train)


def load_qa(
    path: Path, rows: list[tuple[int, dict[str, Any]]], problems: list[Problem] | None = None
) -> EvalSet:
    """``question`` with ``answer``/``answers`` and optional ``id`` and ``doc_ids``."""
    problems = [] if problems is None else problems

    def question(n: int, row: dict[str, Any]) -> Question:
        doc_ids = row.get("doc_ids") or []
        if not isinstance(doc_ids, list) or not all(isinstance(d, str) for d in doc_ids):
            raise _Bad("'doc_ids' must be a list of document ids")
        answers = _answers(row.get("answers", row.get("answer")))
        qid = _id(row.get("id") or f"q{n}", "id")
        return Question(qid, _text(row, "question"), answers, frozenset(doc_ids))

    questions, train = _split(path, rows, problems, question)
    _raise_any(problems)
    _unique_ids([*questions, *train], path)
    return EvalSet("qa", path, questions, None, train)


def _split(
    path: Path,
    rows: list[tuple[int, dict[str, Any]]],
    problems: list[Problem],
    make: Callable[[int, dict[str, Any]], Question],
) -> tuple[list[Question], list[Question]]:
    """The questions asked and the training split (rows with ``"split": "train"``)."""

    def tagged(n: int, row: dict[str, Any]) -> tuple[bool, Question]:
        split = row.get("split", "test")
        if not isinstance(split, str) or not split.strip():
            raise _Bad('\'split\' must be a non-empty string, e.g. "train" or "test"')
        return split.strip().lower() == "train", make(n, row)

    both = _each(path, rows, problems, tagged)
    return [q for is_train, q in both if not is_train], [q for is_train, q in both if is_train]


def _unique_ids(questions: list[Question], path: Path) -> None:
    seen: set[str] = set()
    for q in questions:
        if q.id in seen:
            raise DatasetError(f"{path}: question id {q.id!r} appears twice")
        seen.add(q.id)

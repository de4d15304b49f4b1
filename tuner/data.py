"""Supervised fine-tuning data: read JSONL, check it and encode it for training.

Every record becomes an ``Example``: chat ``messages`` (an optional system turn, then user and
assistant turns alternating, ending with an assistant turn) plus ``meta`` (line, source and
whatever provenance the producer kept, such as ``doc_ids``). Files are read in three formats,
detected per file from the first record that names one: alpaca (instruction/input/output), chat
(OpenAI ``messages`` or ShareGPT ``conversations``) and prompt_completion. Task templates (qa,
summarization, translation, classification) turn plain records into instructions; qa asks with
the very prompts the service uses (``tuner.prompts``). Every problem is collected with its line
number and raised together as one ``DataError``.

``encode`` derives the loss mask from the tokenizer's own chat template: it renders the
conversation prefix by prefix and trains on each assistant turn's tokens up to and including its
end-of-turn token. It knows nothing of any particular template, and refuses (with a clear error)
a template whose renderings of a prefix are not token prefixes of the whole conversation.
Splitting, mixing and hashing example sets is ``tuner.mixing``. It does not know models,
training loops or where files come from.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retriever import jsonl
from tuner.durable import atomic_write_lines

IGNORE = -100  # the label of tokens that carry no loss
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
SHAREGPT_ROLES["system"] = "system"
SHOWN = 20  # problems listed in str(DataError)


@dataclass
class Example:
    messages: list[dict[str, str]]  # {"role": system|user|assistant, "content": ...}
    meta: dict[str, Any] = field(default_factory=dict)  # line, source, doc_ids, ...


class DataError(ValueError):
    """Every problem found in a dataset, as (line number, message); line 0 is the whole file."""

    def __init__(self, problems: list[tuple[int, str]], path: str | Path | None = None) -> None:
        self.problems = list(problems)
        self.path = str(path) if path is not None else None
        super().__init__(self._text())

    def _text(self) -> str:
        where = self.path or "data"
        lines = [f"{where}:{n}: {msg}" if n else f"{where}: {msg}" for n, msg in self.problems]
        more = len(lines) - SHOWN
        shown = lines[:SHOWN] + ([f"... and {more} more problems"] if more > 0 else [])
        return "\n".join(shown)


class _Bad(Exception):
    """One record's problem (becomes a DataError line)."""


# ---- fields and turns -------------------------------------------------------------------------
def _text(rec: dict[str, Any], key: str, *, optional: bool = False, answer: bool = False) -> str:
    """A string field; optional ones that are absent, null or blank come back as ''."""
    value = rec.get(key)
    if value is None:
        if optional:
            return ""
        raise _Bad(f"missing field {key!r}")
    if not isinstance(value, str):
        raise _Bad(f"field {key!r} must be a string, got {type(value).__name__}")
    if not value.strip() and not optional:
        raise _Bad(f"empty answer (field {key!r})" if answer else f"field {key!r} is empty")
    return value if value.strip() else ""


def _check_messages(messages: list[dict[str, str]]) -> None:
    """Raise ``_Bad`` unless: optional system, then user/assistant alternating, assistant last."""
    if not messages:
        raise _Bad("no turns")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _Bad(f"turn {i}: must be an object, got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise _Bad(f"turn {i}: role must be one of {ROLES}, got {role!r}")
        if not isinstance(content, str):
            raise _Bad(f"turn {i}: content must be a string, got {type(content).__name__}")
        if not content.strip():
            raise _Bad(f"turn {i}: empty answer" if role == "assistant" else f"turn {i}: empty")
    skip = 1 if messages[0]["role"] == "system" else 0
    body = messages[skip:]
    for i, m in enumerate(body):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            raise _Bad(
                "turns must be an optional system turn, then user and assistant alternating; "
                f"turn {i + skip} is {m['role']!r} where {want!r} belongs"
            )
    if not body or body[-1]["role"] != "assistant":
        raise _Bad("the last turn must be the assistant's")


def _with_system(rec: dict[str, Any], turns: list[dict[str, str]]) -> list[dict[str, str]]:
    system = _text(rec, "system", optional=True)
    if system and not (turns and turns[0]["role"] == "system"):
        turns = [{"role": "system", "content": system}, *turns]
    return turns


def _qa(user: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


# ---- formats ----------------------------------------------------------------------------------
def _alpaca(rec: dict[str, Any]) -> list[dict[str, str]]:
    instruction, extra = _text(rec, "instruction"), _text(rec, "input", optional=True)
    user = f"{instruction}\n\n{extra}" if extra else instruction
    return _with_system(rec, _qa(user, _text(rec, "output", answer=True)))


def _prompt_completion(rec: dict[str, Any]) -> list[dict[str, str]]:
    return _with_system(rec, _qa(_text(rec, "prompt"), _text(rec, "completion", answer=True)))


def _chat(rec: dict[str, Any]) -> list[dict[str, str]]:
    key = "messages" if "messages" in rec else "conversations"
    turns = rec.get(key)
    if turns is None:
        raise _Bad("missing field 'messages' (or ShareGPT 'conversations')")
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise _Bad(f"field {key!r} must be a list of objects")
    messages = [_turn(t, i, sharegpt=key == "conversations") for i, t in enumerate(turns)]
    return _with_system(rec, messages)


def _turn(turn: dict[str, Any], i: int, *, sharegpt: bool) -> dict[str, str]:
    role_key, text_key = ("from", "value") if sharegpt else ("role", "content")
    role = turn.get(role_key)
    if sharegpt:
        if role not in SHAREGPT_ROLES:
            raise _Bad(f"turn {i}: 'from' must be human, gpt or system, got {role!r}")
        role = SHAREGPT_ROLES[role]
    if role not in ROLES:
        raise _Bad(f"turn {i}: role must be one of {ROLES}, got {role!r}")
    content = turn.get(text_key)
    if not isinstance(content, str):
        raise _Bad(f"turn {i}: {text_key!r} must be a string, got {type(content).__name__}")
    return {"role": role, "content": content}


FORMATS: dict[str, Callable[[dict[str, Any]], list[dict[str, str]]]] = {
    "alpaca": _alpaca,
    "chat": _chat,
    "prompt_completion": _prompt_completion,
}


def _sniff(rec: dict[str, Any]) -> str | None:
    """The format a record's keys name, or None."""
    if "messages" in rec or "conversations" in rec:
        return "chat"
    if "instruction" in rec:
        return "alpaca"
    if "prompt" in rec or "completion" in rec:
        return "prompt_completion"
    return None


# ---- task templates ---------------------------------------------------------------------------
@dataclass
class _Context:
    doc_id: str
    text: str


def _task_qa(rec: dict[str, Any]) -> list[dict[str, str]]:
    from tuner.prompts import base_messages, rag_messages

    question, answer = _text(rec, "question"), _text(rec, "answer", answer=True)
    context = rec.get("context")
    if isinstance(context, str):
        context = [context] if context.strip() else []
    if context is not None and not (
        isinstance(context, list) and all(isinstance(c, str) for c in context)
    ):
        raise _Bad("field 'context' must be a string or a list of strings")
    passages = [_Context(f"context-{i}", c) for i, c in enumerate(context or [], 1)]
    asked = rag_messages(question, passages) if passages else base_messages(question)
    return [*_with_system(rec, asked), {"role": "assistant", "content": answer}]


def _task_summarization(rec: dict[str, Any]) -> list[dict[str, str]]:
    user = f"Summarize the following text.\n\n{_text(rec, 'text')}"
    return _with_system(rec, _qa(user, _text(rec, "summary", answer=True)))


def _task_translation(rec: dict[str, Any]) -> list[dict[str, str]]:
    text, target = _text(rec, "text"), _text(rec, "target_lang")
    source = _text(rec, "source_lang", optional=True)
    direction = f"from {source} to {target}" if source else f"to {target}"
    user = f"Translate the following text {direction}.\n\n{text}"
    return _with_system(rec, _qa(user, _text(rec, "translation", answer=True)))


def _task_classification(rec: dict[str, Any]) -> list[dict[str, str]]:
    text, label = _text(rec, "text"), _text(rec, "label", answer=True)
    labels = rec.get("labels")
    if labels is None:
        ask = "Answer with its label only."
    elif isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels):
        if label not in labels:
            raise _Bad(f"label {label!r} is not one of labels {labels}")
        ask = f"Answer with one of: {', '.join(labels)}."
    else:
        raise _Bad("field 'labels' must be a non-empty list of strings")
    user = f"Classify the following text. {ask}\n\n{text}"
    return _with_system(rec, _qa(user, label))


TEMPLATES: dict[str, Callable[[dict[str, Any]], list[dict[str, str]]]] = {
    "qa": _task_qa,
    "summarization": _task_summarization,
    "translation": _task_translation,
    "classification": _task_classification,
}


# ---- reading and writing ----------------------------------------------------------------------
def read_jsonl(path: str | Path, format: str = "auto", template: str = "chat") -> list[Example]:
    """Read a JSONL file into examples, or raise ``DataError`` listing every bad line.

    ``template`` "chat" reads records in ``format`` (auto: detected from the first record that
    names a format; records in another format are reported); any other template reads the
    task's plain fields and ``format`` must stay "auto".
    """
    path = Path(path)
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"format: one of auto, {', '.join(FORMATS)}, got {format!r}")
    if template != "chat" and template not in TEMPLATES:
        raise ValueError(f"template: one of chat, {', '.join(TEMPLATES)}, got {template!r}")
    if template != "chat" and format != "auto":
        raise ValueError(
            f"format {format!r} with template {template!r}: a task template "
            "reads its own fields, leave format as 'auto'"
        )
    records, problems = jsonl_records(path)
    chosen, since = _detect(records, format) if template == "chat" else (template, 0)
    parse = TEMPLATES[template] if template != "chat" else FORMATS.get(chosen, _chat)
    examples = []
    for line, rec in records:
        try:
            if template == "chat":
                _agrees(rec, chosen, format, since)
            messages = parse(rec)
            _check_messages(messages)
        except _Bad as exc:
            problems.append((line, str(exc)))
            continue
        meta = rec["meta"] if isinstance(rec.get("meta"), dict) else {}
        examples.append(Example(messages, {**meta, "line": line, "source": path.name}))
    if not records and not problems:
        problems.append((0, "no records"))
    if problems:
        raise DataError(sorted(problems), path)
    return examples


def jsonl_records(path: Path) -> tuple[jsonl.Records, jsonl.Problems]:
    """Every non-blank line parsed as a JSON object, and the lines that are not (with why), as
    ``retriever.jsonl`` reads every JSONL input."""
    return jsonl.records(jsonl.read_path(path))


def _detect(records: list[tuple[int, dict[str, Any]]], format: str) -> tuple[str, int]:
    """The file's format and the line it was read from (0: given, or nothing names one)."""
    if format != "auto":
        return format, 0
    for line, rec in records:
        found = _sniff(rec)
        if found is not None:
            return found, line
    return "unknown", 0


def _agrees(rec: dict[str, Any], chosen: str, format: str, since: int) -> None:
    found = _sniff(rec)
    if chosen == "unknown":
        raise _Bad(
            "no known format: expected 'messages' or 'conversations' (chat), "
            "'instruction'/'output' (alpaca) or 'prompt'/'completion' (prompt_completion)"
        )
    if found is not None and found != chosen:
        origin = f"detected from line {since}" if format == "auto" else "as asked"
        raise _Bad(f"record is {found}, but the file is {chosen} ({origin})")


def write_jsonl(examples: Sequence[Example], path: str | Path) -> None:
    """Write examples in chat format with their meta, atomically (temp + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_lines(
        path,
        (
            json.dumps({"messages": e.messages, "meta": e.meta}, ensure_ascii=False, default=str)
            + "\n"
            for e in examples
        ),
    )


# ---- checking ---------------------------------------------------------------------------------
def canonical(messages: Any) -> str:
    """The JSON two conversations are duplicates under (sorted keys, no spaces)."""
    return json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _where(examples: Sequence[Example]) -> str | None:
    sources = {str(e.meta.get("source")) for e in examples if e.meta.get("source")}
    return sources.pop() if len(sources) == 1 else None


def validate(
    examples: Sequence[Example], tokenizer: Any, max_length: int, min_count: int
) -> list[Example]:
    """Return the examples, or raise ``DataError`` with every problem: bad turns, too long with
    the chat template, a template unfit for loss masks, duplicates (naming both lines), too few.
    A problem's line is ``meta["line"]``, else the example's 1-based position."""
    problems: list[tuple[int, str]] = []
    first_seen: dict[str, int] = {}
    for i, e in enumerate(examples):
        line = int(e.meta.get("line", i + 1))
        try:
            _check_messages(e.messages)
            encode(e, tokenizer, max_length)
        except _Bad as exc:
            problems.append((line, str(exc)))
            continue
        except DataError as exc:
            problems += [(line, msg) for _, msg in exc.problems]
            continue
        key = canonical(e.messages)
        if key in first_seen:
            problems.append((line, f"duplicate of line {first_seen[key]}"))
        else:
            first_seen[key] = line
    if len(examples) < min_count:
        problems.append((0, f"{len(examples)} examples, fewer than the minimum {min_count}"))
    if problems:
        raise DataError(sorted(problems), _where(examples))
    return list(examples)


# ---- encoding ---------------------------------------------------------------------------------
def render(
    tokenizer: Any, messages: list[dict[str, str]], prompt: bool, cut: bool = False
) -> list[int]:
    """Token ids of ``messages`` through the chat template (a list or a BatchEncoding); with
    ``cut`` the last (assistant) turn is left open, without its end of turn."""
    ids: Any = tokenizer.apply_chat_template(
        messages, add_generation_prompt=prompt, continue_final_message=cut, tokenize=True
    )
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def _end_of_turn(tokenizer: Any, ids: list[int], start: int, end: int) -> int:
    """``end`` pulled back over trailing whitespace-only tokens (the newline after an
    end-of-turn token is formatting, not something the model must learn to say)."""
    while end - 1 > start and not tokenizer.decode([ids[end - 1]]).strip():
        end -= 1
    return end


def encode(example: Example, tokenizer: Any, max_length: int) -> dict[str, list[int]]:
    """``input_ids`` of the whole conversation and ``labels`` that are -100 except on each
    assistant turn (its content and its end-of-turn token). Raises ``DataError`` when it is
    longer than ``max_length`` or the template is not prefix-stable."""
    messages, line = example.messages, int(example.meta.get("line", 0))
    try:
        ids = render(tokenizer, messages, prompt=False)
        labels = [IGNORE] * len(ids)
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            start = _prefix_len(ids, render(tokenizer, messages[:i], prompt=True), i)
            end = _prefix_len(ids, render(tokenizer, messages[: i + 1], prompt=False), i + 1)
            end = _end_of_turn(tokenizer, ids, start, end)
            labels[start:end] = ids[start:end]
    except _Bad as exc:
        raise DataError([(line, str(exc))], example.meta.get("source")) from None
    except Exception as exc:  # a template that raises (no system role, strict alternation...)
        msg = f"the chat template failed: {exc}"
        raise DataError([(line, msg)], example.meta.get("source")) from None
    if len(ids) > max_length:
        msg = f"{len(ids)} tokens with the chat template, over max_length {max_length}"
        raise DataError([(line, msg)], example.meta.get("source"))
    return {"input_ids": ids, "labels": labels}


def _prefix_len(ids: list[int], prefix: list[int], turns: int) -> int:
    if ids[: len(prefix)] != prefix:
        raise _Bad(
            f"the tokenizer's chat template is not prefix-stable: the first {turns} turns do "
            "not render as a token prefix of the whole conversation, so the assistant turns "
            "cannot be located for the loss mask"
        )
    return len(prefix)


def collate(features: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-pad a batch: input_ids (pad_id), attention_mask (0) and labels (-100) tensors."""
    import torch

    width = max(len(f["input_ids"]) for f in features)
    batch = len(features)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)  # (batch, seq)
    attention = torch.zeros((batch, width), dtype=torch.long)  # (batch, seq)
    labels = torch.full((batch, width), IGNORE, dtype=torch.long)  # (batch, seq)
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        input_ids[row, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
        attention[row, :n] = 1
        labels[row, :n] = torch.tensor(f["labels"], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}

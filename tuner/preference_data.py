"""Preference data for kto and dpo: read JSONL rows, check them and split them.

Two row kinds, in TRL's conversational form (the prompt is the chat the model was asked with,
system turn and passages included; completions are assistant turns):

- kto, unpaired: ``{"prompt": [...], "completion": [{"role": "assistant", ...}], "label": true}``
- dpo, paired: ``{"prompt": [...], "chosen": [...], "rejected": [...]}``

A prompt may also be a string (one user turn), a completion a string, and a KTO label ``up`` or
``down``. ``cut`` (optional) names the completions that were cut off by a token limit, not ended
by the model: ``["rejected"]``. Those train without the end of turn, so the model does not learn
to stop where a limit stopped it. ``meta`` travels with a row (its line, the feedback it came
from) and never reaches a trainer. Every problem is collected with its line and raised as one
``tuner.data.DataError``: bad fields, empty completions, a chosen equal to its rejected,
prompt plus completion over the token limit through the tokenizer's own chat template,
duplicates, too few rows, and for KTO a class balance too lopsided to learn from. ``split``
holds a share out for reward accuracy. Knows nothing of the answer log, models or training loops.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retriever import jsonl
from tuner.data import ROLES, DataError, render
from tuner.durable import atomic_write_lines

KINDS = ("kto", "dpo")
SIDES = {"kto": ("completion",), "dpo": ("chosen", "rejected")}
MIN_MINORITY_SHARE = 0.1  # kto: the rarer label must be at least this share of the rows


@dataclass
class PreferenceRow:
    """One kto row (``completion`` and ``label``) or one dpo pair (``chosen``, ``rejected``)."""

    prompt: list[dict[str, str]]
    completion: str | None = None
    label: bool | None = None
    chosen: str | None = None
    rejected: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    cut: tuple[str, ...] = ()  # the sides (SIDES) a token limit cut off: no end of turn

    @property
    def kind(self) -> str:
        return "dpo" if self.chosen is not None else "kto"

    def sides(self) -> tuple[str, ...]:
        return SIDES[self.kind]

    def completions(self) -> list[str]:
        if self.kind == "dpo":
            return [str(self.chosen), str(self.rejected)]
        return [str(self.completion)]

    def trl_columns(self) -> dict[str, Any]:
        """``to_trl`` plus one ``<side>_cut`` flag per completion, for the trainer's dataset."""
        return {**self.to_trl(), **{f"{s}_cut": s in self.cut for s in self.sides()}}

    def to_trl(self) -> dict[str, Any]:
        """The row as TRL's conversational datasets hold it (no meta)."""

        def turn(text: str | None) -> list[dict[str, str]]:
            return [{"role": "assistant", "content": str(text)}]

        if self.kind == "dpo":
            return {
                "prompt": self.prompt,
                "chosen": turn(self.chosen),
                "rejected": turn(self.rejected),
            }
        return {"prompt": self.prompt, "completion": turn(self.completion), "label": self.label}

    def to_json(self) -> dict[str, Any]:
        cut = {"cut": list(self.cut)} if self.cut else {}
        return {**self.to_trl(), **cut, "meta": self.meta}

    def key(self) -> str:
        return json.dumps([self.prompt, self.completions(), self.label], sort_keys=True)

    def opposite(self) -> str:
        """The key of the row that says the opposite: the other label, or the swapped pair."""
        if self.kind == "dpo":
            return json.dumps([self.prompt, [self.rejected, self.chosen], None], sort_keys=True)
        return json.dumps([self.prompt, self.completions(), not self.label], sort_keys=True)


class _Bad(Exception):
    pass


# ---- reading ----------------------------------------------------------------------------------
def read_jsonl(path: str | Path) -> list[PreferenceRow]:
    """Every row of a preference file; ``DataError`` listing each bad line."""
    rows = []
    records, problems = jsonl.records(jsonl.read_path(path))
    for line, rec in records:
        try:
            row = parse(rec)
        except _Bad as exc:
            problems.append((line, str(exc)))
            continue
        row.meta = {**row.meta, "line": line}
        rows.append(row)
    if problems:
        raise DataError(problems, path)
    kinds = {r.kind for r in rows}
    if len(kinds) > 1:
        raise DataError(
            [
                (
                    0,
                    "mixes kto rows (completion, label) and dpo pairs (chosen, "
                    "rejected); one file holds one kind",
                )
            ],
            path,
        )
    return rows


def parse(rec: Any) -> PreferenceRow:
    """One record as a row (``_Bad`` naming the field that is wrong)."""
    if not isinstance(rec, dict):
        raise _Bad(f"a row is an object, got {type(rec).__name__}")
    given = rec.get("meta")
    meta: dict[str, Any] = dict(given) if isinstance(given, dict) else {}
    prompt = _prompt(rec.get("prompt"))
    if "chosen" in rec or "rejected" in rec:
        chosen, rejected = _completion(rec, "chosen"), _completion(rec, "rejected")
        if chosen.strip() == rejected.strip():
            raise _Bad("chosen and rejected are the same answer")
        row = PreferenceRow(prompt, chosen=chosen, rejected=rejected, meta=meta)
    elif "completion" in rec:
        row = PreferenceRow(prompt, _completion(rec, "completion"), _label(rec), meta=meta)
    else:
        raise _Bad("needs completion and label (kto) or chosen and rejected (dpo)")
    row.cut = _cut(rec.get("cut", []), row.sides())
    return row


def _prompt(value: Any) -> list[dict[str, str]]:
    if isinstance(value, str):
        if not value.strip():
            raise _Bad("field 'prompt' is empty")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise _Bad("field 'prompt' must be a string or a non-empty list of turns")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise _Bad(f"prompt turn {i}: an object with role one of {ROLES}")
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            raise _Bad(f"prompt turn {i}: content must be a non-empty string")
    if value[-1]["role"] != "user":
        raise _Bad("the prompt's last turn must be the user's")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _completion(rec: dict[str, Any], key: str) -> str:
    value = rec.get(key)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        if value[0].get("role") != "assistant":
            raise _Bad(f"field {key!r}: its turn must be the assistant's")
        value = value[0].get("content")
    if not isinstance(value, str):
        raise _Bad(f"field {key!r} must be a string or one assistant turn")
    if not value.strip():
        raise _Bad(f"empty answer (field {key!r})")
    return value


def _cut(value: Any, sides: tuple[str, ...]) -> tuple[str, ...]:
    if not isinstance(value, list) or any(v not in sides for v in value):
        raise _Bad(f"field 'cut' must be a list of {list(sides)}, got {value!r}")
    return tuple(dict.fromkeys(value))


def _label(rec: dict[str, Any]) -> bool:
    value = rec.get("label")
    if isinstance(value, bool):
        return value
    if value in ("up", "down"):
        return value == "up"
    raise _Bad(f"field 'label' must be true/false or up/down, got {value!r}")


# ---- checking ---------------------------------------------------------------------------------
def prompt_ids(tokenizer: Any, prompt: list[dict[str, str]]) -> list[int]:
    """The prompt's tokens through the chat template, ready for the assistant's turn."""
    return render(tokenizer, prompt, prompt=True)


def closing(tokenizer: Any) -> list[int]:
    """The tokens the chat template puts after an assistant turn's text (its end of turn)."""
    turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    whole, open_ = render(tokenizer, turns, prompt=False), render(tokenizer, turns, False, cut=True)
    return whole[len(open_) :] if whole[: len(open_)] == open_ else []


def length(tokenizer: Any, row: PreferenceRow) -> int:
    """Tokens of the prompt and its longest completion, through the chat template."""
    return max(
        len(render(tokenizer, [*row.prompt, {"role": "assistant", "content": c}], prompt=False))
        for c in row.completions()
    )


def validate(
    rows: Sequence[PreferenceRow],
    tokenizer: Any,
    max_length: int,
    min_count: int,
    kind: str,
    where: str | None = None,
) -> list[PreferenceRow]:
    """The rows, or ``DataError`` with every problem: another kind than the method trains,
    over ``max_length`` tokens, duplicates (naming both lines), fewer than ``min_count``, and
    for kto a missing label or a rarer label under ``MIN_MINORITY_SHARE`` of the rows."""
    problems: list[tuple[int, str]] = []
    seen: dict[str, int] = {}

    def bad(line: int, row: PreferenceRow, message: str) -> None:
        answers = row.meta.get("answer_ids")  # a row from feedback: name its answers too
        problems.append((line, f"{message} (answer {', '.join(answers)})" if answers else message))

    for i, row in enumerate(rows):
        line = int(row.meta.get("line", i + 1))
        if row.kind != kind:
            want = "completion and label" if kind == "kto" else "chosen and rejected"
            bad(line, row, f"a {row.kind} row; {kind} needs {want}")
            continue
        n = length(tokenizer, row)
        if n > max_length:
            bad(line, row, f"{n} tokens with the chat template, over max_length {max_length}")
            continue
        key = row.key()
        if key in seen:
            bad(line, row, f"duplicate of line {seen[key]}")
            continue
        seen[key] = line
        against = row.opposite()
        if against in seen:
            bad(
                line,
                row,
                f"contradicts line {seen[against]} (the same answers, the opposite preference)",
            )
    if len(rows) < min_count:
        problems.append((0, f"{len(rows)} rows, fewer than the minimum {min_count}"))
    if kind == "kto" and rows:
        up = sum(1 for r in rows if r.label)
        down = len(rows) - up
        if min(up, down) < MIN_MINORITY_SHARE * len(rows):
            problems.append(
                (
                    0,
                    f"class balance: {up} desirable and {down} undesirable rows; "
                    f"kto needs both, the rarer at least {MIN_MINORITY_SHARE:.0%}",
                )
            )
    if problems:
        raise DataError(sorted(problems), where)
    return list(rows)


def kto_weights(rows: Sequence[PreferenceRow]) -> tuple[float, float]:
    """(desirable, undesirable) loss weights that put the two classes' summed weights in the
    1 to 4/3 ratio the KTO paper recommends: the rarer class is weighted up."""
    up = sum(1 for r in rows if r.label)
    down = len(rows) - up
    if not up or not down:
        return 1.0, 1.0
    if up >= down:  # undesirable weighted up so that up * 1 / (down * w) lies in [1, 4/3]
        return 1.0, round(max(1.0, up / down / (7 / 6)), 3)
    return round(down / up * (7 / 6), 3), 1.0


# ---- splitting and writing --------------------------------------------------------------------
def split(
    rows: Sequence[PreferenceRow], val_fraction: float, held_out: float, seed: int
) -> tuple[list[PreferenceRow], list[PreferenceRow], list[PreferenceRow]]:
    """(train, val, held out): the rows of one prompt go to one part, so no held-out question
    was trained on; the training rows are then shuffled row by row."""
    groups: dict[str, list[PreferenceRow]] = {}
    for row in rows:
        groups.setdefault(json.dumps(row.prompt, sort_keys=True), []).append(row)
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    n_test = int(len(order) * held_out)
    n_val = int(len(order) * val_fraction)
    test = [r for k in order[:n_test] for r in groups[k]]
    val = [r for k in order[n_test : n_test + n_val] for r in groups[k]]
    train = [r for k in order[n_test + n_val :] for r in groups[k]]
    # Rows of one prompt must not sit side by side in training: TRL's KTO pairs each completion
    # with its batch neighbour's prompt for the KL estimate, which needs them mismatched.
    random.Random(seed + 1).shuffle(train)
    return train, val, test


def write_jsonl(rows: Sequence[PreferenceRow], path: str | Path) -> None:
    """Rows with their meta, atomically (temp + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_lines(
        path, (json.dumps(r.to_json(), ensure_ascii=False, default=str) + "\n" for r in rows)
    )


def dataset_hash(rows: Sequence[PreferenceRow]) -> str:
    import hashlib

    h = hashlib.sha256()
    for r in rows:
        h.update(r.key().encode("utf-8", "surrogatepass"))
    return h.hexdigest()

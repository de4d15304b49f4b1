"""The forgetting probe: general-knowledge questions scored before and after tuning.

``probe_set.jsonl`` (package data) holds short questions with gold answers (capitals, basic
science, arithmetic in words, common facts; nothing from any user's domain). ``score`` asks them
through the tokenizer's chat template and returns the mean per-token negative log-likelihood of
the gold answers (loss on answer tokens only) and the share of greedy 8-token continuations that
contain an accepted answer. ``compare`` turns two scores into deltas and a ``forgetting`` flag.
Knows nothing of training, adapters or the registry; works on any causal LM (a ``PeftModel``
included) with a chat template.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

NLL_RISE = 0.10  # forgetting: probe NLL rises by more than this share of its value before
ACCURACY_DROP = 0.10  # forgetting: probe accuracy drops by more than this (absolute)
NEW_TOKENS = 8
_EPS = 1e-9


@dataclass(frozen=True)
class ProbeItem:
    question: str
    answer: str
    aliases: tuple[str, ...] = ()

    def accepts(self, text: str) -> bool:
        """True when ``text`` contains the answer or an alias as whole words (any case)."""
        norm = " ".join(text.lower().split())
        return any(
            re.search(rf"(?<!\w){re.escape(' '.join(a.lower().split()))}(?!\w)", norm)
            for a in (self.answer, *self.aliases)
        )


@cache
def probe_set() -> tuple[ProbeItem, ...]:
    """The packaged probe questions (read once)."""
    text = resources.files("tuner").joinpath("probe_set.jsonl").read_text(encoding="utf-8")
    items = []
    for line in text.splitlines():
        if line.strip():
            row = json.loads(line)
            items.append(ProbeItem(row["question"], row["answer"], tuple(row.get("aliases", ()))))
    return tuple(items)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _encode(tokenizer: Any, item: ProbeItem) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids): the question through the chat template with the generation
    prompt, then the answer's tokens as they follow it (joint tokenisation when that keeps the
    prompt's tokens intact, the answer alone otherwise)."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": item.question}], tokenize=False, add_generation_prompt=True
    )
    prompt = _ids(tokenizer, text)
    joint = _ids(tokenizer, text + item.answer)
    if joint[: len(prompt)] == prompt and len(joint) > len(prompt):
        return prompt, joint[len(prompt) :]
    return prompt, _ids(tokenizer, item.answer)


def _pad_id(tokenizer: Any) -> int:
    for pad in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if pad is not None:
            return int(pad)
    return 0


def _nll(
    model: Any, rows: list[tuple[list[int], list[int]]], pad: int, device: Any
) -> tuple[float, int]:
    """Summed answer-token NLL and answer-token count for one batch of (prompt, answer) ids."""
    import torch

    width = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (p, a) in enumerate(rows):  # right padding
        seq = p + a
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, len(p) : len(seq)] = torch.tensor(a)
    ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
    logits = model(input_ids=ids, attention_mask=mask).logits  # (batch, seq[+virtual], vocab)
    logits = logits[:, -width:].float()  # prompt tuning prepends virtual tokens: drop them
    shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]  # (batch, seq-1, vocab)
    losses = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )
    return float(losses), int((shift_labels != -100).sum())


def _greedy(model: Any, prompts: list[list[int]], pad: int, device: Any) -> list[list[int]]:
    """Greedy ``NEW_TOKENS``-token continuations of a batch of prompts (left padding)."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    out = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
        pad_token_id=pad,
    )  # (batch, width + new)
    return [row[width:].tolist() for row in out]


def score(model: Any, tokenizer: Any, batch_size: int = 8) -> dict[str, float]:
    """Probe NLL (mean over answer tokens), greedy containment accuracy and the item count."""
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    items = probe_set()
    pad = _pad_id(tokenizer)
    device = next(model.parameters()).device
    encoded = [_encode(tokenizer, item) for item in items]
    prompts = [p for p, _ in encoded]
    total, count, correct = 0.0, 0, 0
    with torch.inference_mode():
        for start in range(0, len(items), batch_size):
            stop = start + batch_size
            batch_nll, batch_count = _nll(model, encoded[start:stop], pad, device)
            total, count = total + batch_nll, count + batch_count
            for item, new in zip(
                items[start:stop], _greedy(model, prompts[start:stop], pad, device), strict=True
            ):
                correct += item.accepts(tokenizer.decode(new, skip_special_tokens=True))
    return {
        "probe_nll": total / max(count, 1),
        "probe_accuracy": correct / len(items),
        "probe_n": len(items),
    }


def score_in_eval(model: Any, tokenizer: Any) -> dict[str, float]:
    """``score`` with the model in eval mode (no dropout), its training mode restored after."""
    was_training = model.training
    model.eval()
    try:
        return dict(score(model, tokenizer))
    finally:
        model.train(was_training)


def compare(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Deltas (after - before) and ``forgetting``: NLL up by more than 10% of its value before,
    or accuracy down by more than 0.1."""
    nll_delta = after["probe_nll"] - before["probe_nll"]
    acc_delta = after["probe_accuracy"] - before["probe_accuracy"]
    base = before["probe_nll"]
    rel = nll_delta / base if base > 0 else (math.inf if nll_delta > 0 else 0.0)
    reasons = []
    if rel > NLL_RISE + _EPS:
        reasons.append(f"probe NLL rose {rel:.0%} ({base:.3f} -> {after['probe_nll']:.3f})")
    if acc_delta < -ACCURACY_DROP - _EPS:
        reasons.append(
            f"probe accuracy fell {-acc_delta:.2f} "
            f"({before['probe_accuracy']:.2f} -> {after['probe_accuracy']:.2f})"
        )
    return {
        "probe_nll_delta": nll_delta,
        "probe_nll_relative": rel,
        "probe_accuracy_delta": acc_delta,
        "forgetting": bool(reasons),
        "forgetting_reasons": reasons,
    }

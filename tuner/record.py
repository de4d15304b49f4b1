"""What the registry records about one adapter, and how that record reads: ``Record``, staleness.

``Record`` is the body of an adapter folder's ``ragtune.json`` (method, component, base model,
dataset hashes, source document versions, hyperparameters, metrics, lineage, eval gate,
staleness); ``FIELDS`` are the keys it writes. ``stale_reason`` says which of the documents an
adapter was trained on changed or were deleted; ``describe`` is one screen of text about a
record (``ragtune adapters show``).

Knows nothing of folders, files, locks or training: ``tuner.registry`` reads and writes records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Record:
    """What the registry knows about one adapter folder (stored as ``ragtune.json``)."""

    id: str
    name: str
    version: int
    method: str = "lora"
    component: str = "generator"  # generator | retriever (an embedder: never loaded for answers)
    base_model: str = ""
    dataset_hashes: dict[str, str] = field(default_factory=dict)
    source_documents: dict[str, Any] = field(default_factory=dict)  # doc_id -> version trained on
    feedback_ids: list[str] = field(default_factory=list)  # ratings (answer:key) trained on
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)  # incl. probe before/after/delta
    created: str = ""  # ISO 8601, UTC
    parent: str | None = None  # the adapter this one continued from
    lineage: list[str] = field(default_factory=list)  # ids, oldest first, ending with this one
    eval_gate: dict[str, Any] | None = None  # None (never gated) or {"passed": bool, ...}
    sweep: dict[str, Any] | None = None  # a sweep's trial: {id, trial, params, baseline}
    promoted: bool = False  # derived from promoted.json on load; never trusted from the file
    stale: bool = False  # a source document changed or was deleted since training
    stale_reason: str | None = None
    servable: bool = True  # False for method full and for embedders (not a generator adapter)
    tracked: bool = True  # False for a hand-copied folder without ragtune.json

    def to_json(self) -> dict[str, Any]:
        body = dataclasses.asdict(self)
        body.pop("promoted")
        body.pop("tracked")
        return body


FIELDS = {f.name for f in dataclasses.fields(Record)} - {"promoted", "tracked"}


def stale_reason(trained: Mapping[str, Any], current: Mapping[str, Any | None]) -> str | None:
    """Which of the ``trained`` documents changed or were deleted, or None when none did."""
    changed = [
        d
        for d in sorted(trained)
        if current.get(d) is not None and not _same(trained[d], current[d])
    ]
    deleted = [d for d in sorted(trained) if current.get(d) is None]
    parts = []
    if changed:
        parts.append("changed: " + ", ".join(_short(changed)))
    if deleted:
        parts.append("deleted: " + ", ".join(_short(deleted)))
    return "; ".join(parts) or None


def _same(a: Any, b: Any) -> bool:
    return a == b or str(a) == str(b)


def _short(ids: Iterable[str], most: int = 20) -> list[str]:
    ids = list(ids)
    return ids if len(ids) <= most else [*ids[:most], f"... {len(ids) - most} more"]


def describe(record: Record) -> str:
    """One screen of text about an adapter, for ``ragtune adapters show``."""
    flags = [
        f
        for f, on in (
            ("promoted", record.promoted),
            ("STALE", record.stale),
            ("not servable", not record.servable),
            ("untracked", not record.tracked),
        )
        if on
    ]
    lines = [
        f"{record.id}" + (f"  [{', '.join(flags)}]" if flags else ""),
        f"  name/version   {record.name} v{record.version}",
        f"  method         {record.method} ({record.component})",
        f"  base model     {record.base_model or '-'}",
        f"  created        {record.created or '-'}",
        f"  lineage        {' -> '.join(record.lineage) if record.lineage else record.id}",
    ]
    if record.stale:
        lines.append(f"  stale because  {record.stale_reason or '-'}")
    lines.append(f"  eval gate      {_gate(record.eval_gate)}")
    if record.sweep:
        params = ", ".join(f"{k}={v}" for k, v in record.sweep.get("params", {}).items())
        lines.append(
            f"  sweep          {record.sweep.get('id')} trial {record.sweep.get('trial')}: {params}"
        )
    for key, value in sorted(record.dataset_hashes.items()):
        lines.append(f"  dataset        {key}: {str(value)[:16]}")
    docs = record.source_documents
    if docs:
        shown = ", ".join(f"{d}@{v}" for d, v in sorted(docs.items())[:6])
        more = f" (+{len(docs) - 6} more)" if len(docs) > 6 else ""
        lines.append(f"  documents      {len(docs)}: {shown}{more}")
    if record.feedback_ids:
        lines.append(f"  feedback       {len(record.feedback_ids)} ratings trained on")
    hp = record.hyperparameters
    keys = ("learning_rate", "epochs", "max_steps", "batch_size", "rank", "alpha")
    if hp:
        lines.append("  hyperparams    " + ", ".join(f"{k}={hp[k]}" for k in keys if k in hp))
    lines.extend(_metric_lines(record.metrics))
    return "\n".join(lines)


def _gate(gate: Mapping[str, Any] | None) -> str:
    if gate is None:
        return "not run"
    rest = ", ".join(f"{k}={v}" for k, v in sorted(gate.items()) if k != "passed")
    return ("passed" if gate.get("passed") else "FAILED") + (f" ({rest})" if rest else "")


def _metric_lines(metrics: Mapping[str, Any]) -> list[str]:
    lines = []
    scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float | bool | str)}
    for key in sorted(scalars)[:10]:
        value = scalars[key]
        lines.append(
            f"  {key:<14} {value:.4g}" if isinstance(value, float) else f"  {key:<14} {value}"
        )
    probe = metrics.get("probe")
    if isinstance(probe, Mapping):
        before, after = probe.get("before") or {}, probe.get("after") or {}
        nll = (before.get("probe_nll"), after.get("probe_nll"))
        acc = (before.get("probe_accuracy"), after.get("probe_accuracy"))
        if None not in nll and None not in acc:
            lines.append(
                f"  probe          nll {nll[0]:.3f} -> {nll[1]:.3f}, accuracy {acc[0]:.2f} -> "
                f"{acc[1]:.2f}" + ("  FORGETTING" if probe.get("forgetting") else "")
            )
    return lines

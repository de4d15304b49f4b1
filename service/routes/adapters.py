"""/v1/adapters: the registry's adapters (lineage, metrics, stale and promoted flags), loading
and unloading them at runtime, promotion and deletion (admin). An adapter a request holds is
neither unloaded nor deleted (409 ``adapter_in_use``). Base models are shown by public name,
never by folder."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter

from retriever.errors import DocumentNotFound
from service.adapters import AdapterInUse
from service.auth import Admin, Reader
from service.bounds import Body
from service.deps import State
from service.errors import ServiceError
from service.runtime import public_name
from service.state import AppState

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])
HUB_OR_PRESET = re.compile(r"^[\w.-]+(/[\w.-]+)?$")  # "smollm2", "HuggingFaceTB/SmolLM2-135M"


class Force(Body):
    force: bool = False


def _summary(record: Any, loaded: list[str]) -> dict[str, Any]:
    metrics = {k: v for k, v in record.metrics.items() if k not in ("loss_curve", "val_curve")}
    return {
        "id": record.id,
        "name": record.name,
        "version": record.version,
        "method": record.method,
        "component": record.component,
        "base_model": _base_model(record.base_model),
        "created": record.created,
        "lineage": record.lineage,
        "parent": record.parent,
        "feedback_ids": record.feedback_ids,  # the ratings (answer:key) a kto/dpo run used
        "metrics": metrics,
        "eval_gate": record.eval_gate,
        "sweep": record.sweep,  # a sweep's trial: {id, trial, params, baseline}
        "promoted": record.promoted,
        "stale": record.stale,
        "stale_reason": record.stale_reason,
        "servable": record.servable,
        "loaded": record.id in loaded,
    }


def _base_model(name: str) -> str:
    """The base model a record names, a folder by its last part (a preset or hub id as is)."""
    if not name or (HUB_OR_PRESET.match(name) and not Path(name).exists()):
        return name
    return public_name(name)


def _versions(state: AppState, doc_ids: list[str]) -> dict[str, Any]:
    """Current version of each document (None once deleted), for staleness."""
    out: dict[str, Any] = {}
    for doc_id in doc_ids:
        try:
            out[doc_id] = state.index().get(doc_id).version
        except DocumentNotFound:
            out[doc_id] = None
    return out


@router.get("")
def list_adapters(state: State, _: Reader) -> dict[str, Any]:
    """Every adapter in the registry; those whose training documents changed or were deleted
    since are marked stale here."""
    registry = state.registry()
    if state.retriever is not None:
        registry.mark_stale(lambda ids: _versions(state, list(ids)))
    loaded = state.adapter_set().loaded()
    return {
        "loaded": loaded,
        "available": state.adapter_set().available(),
        "adapters": [_summary(r, loaded) for r in registry.list()],
    }


@router.get("/{adapter_id}")
def show(adapter_id: str, state: State, _: Reader) -> dict[str, Any]:
    record = state.registry().get(adapter_id)
    return {
        **_summary(record, state.adapter_set().loaded()),
        "parent": record.parent,
        "dataset_hashes": record.dataset_hashes,
        "hyperparameters": record.hyperparameters,
        "source_documents": len(record.source_documents),
    }


@router.post("/{name}/load")
async def load(name: str, state: State, _: Admin) -> dict[str, Any]:
    """Load ``DATA_DIR/adapters/<name>`` onto the generator; waits for the running batch."""
    await anyio.to_thread.run_sync(state.adapter_set().load, name)
    state.metrics.adapters.set(len(state.adapter_set().loaded()))
    return {"loaded": state.adapter_set().loaded()}


async def _unload(
    state: AppState, name: str, missing_ok: bool = False, before: Callable[[], Any] | None = None
) -> None:
    """Unload ``name`` (after ``before``) in a worker thread; 409 while a request holds it."""
    adapters = state.adapter_set()
    try:
        await anyio.to_thread.run_sync(
            lambda: adapters.unload(name, missing_ok=missing_ok, before=before)
        )
    except AdapterInUse as exc:
        raise ServiceError(409, "adapter_in_use", str(exc), {"retry_after": 1}) from None
    state.metrics.adapters.set(len(adapters.loaded()))


@router.post("/{name}/unload")
async def unload(name: str, state: State, _: Admin) -> dict[str, Any]:
    """Unload the adapter; refused (409) while a request holds it."""
    await _unload(state, name)
    return {"loaded": state.adapter_set().loaded()}


@router.post("/{adapter_id}/promote")
def promote(adapter_id: str, state: State, _: Admin, body: Force | None = None) -> dict[str, Any]:
    """Make the adapter the default of ft and hybrid modes; refused (409) when its eval gate
    failed or it is stale, unless forced."""
    record = state.registry().promote(adapter_id, force=bool(body and body.force))
    return _summary(record, state.adapter_set().loaded())


@router.delete("/{adapter_id}")
async def delete(adapter_id: str, state: State, _: Admin, force: bool = False) -> dict[str, Any]:
    """Delete the adapter (the promoted one only with force) and unload it if loaded; refused
    (409) while a request holds it. The embedder the index uses is never deleted; its rollback
    target only with force."""
    from service.loading import embedders_in_use

    role = embedders_in_use(state.settings).get(adapter_id)
    if role == "embedder" or (role and not force):
        hint = "" if role == "embedder" else "; use force to delete it anyway"
        raise ServiceError(409, "adapter_in_use", f"{adapter_id} is the index's {role}{hint}")
    registry = state.registry()
    if state.adapters is None:
        registry.delete(adapter_id, force=force)
    else:
        remove = partial(registry.delete, adapter_id, force=force)
        await _unload(state, adapter_id, missing_ok=True, before=remove)
    return {"deleted": adapter_id}

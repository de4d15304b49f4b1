"""/v1/adapters: the registry's adapters (lineage, metrics, stale and promoted flags), loading
and unloading them at runtime, promotion and deletion (admin)."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from retriever.errors import DocumentNotFound
from service.auth import Admin, Reader
from service.deps import State
from service.errors import ServiceError
from service.state import AppState

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])


class Force(BaseModel):
    model_config = ConfigDict(extra="forbid")
    force: bool = False


def _summary(record: Any, loaded: list[str]) -> dict[str, Any]:
    metrics = {k: v for k, v in record.metrics.items() if k not in ("loss_curve", "val_curve")}
    return {
        "id": record.id,
        "name": record.name,
        "version": record.version,
        "method": record.method,
        "component": record.component,
        "base_model": record.base_model,
        "created": record.created,
        "lineage": record.lineage,
        "metrics": metrics,
        "eval_gate": record.eval_gate,
        "promoted": record.promoted,
        "stale": record.stale,
        "stale_reason": record.stale_reason,
        "servable": record.servable,
        "loaded": record.id in loaded,
    }


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


@router.post("/{name}/unload")
async def unload(name: str, state: State, _: Admin) -> dict[str, Any]:
    await anyio.to_thread.run_sync(state.adapter_set().unload, name)
    state.metrics.adapters.set(len(state.adapter_set().loaded()))
    return {"loaded": state.adapter_set().loaded()}


@router.post("/{adapter_id}/promote")
def promote(adapter_id: str, state: State, _: Admin, body: Force | None = None) -> dict[str, Any]:
    """Make the adapter the default of ft and hybrid modes; refused (409) when its eval gate
    failed or it is stale, unless forced."""
    record = state.registry().promote(adapter_id, force=bool(body and body.force))
    return _summary(record, state.adapter_set().loaded())


@router.delete("/{adapter_id}")
async def delete(adapter_id: str, state: State, _: Admin, force: bool = False) -> dict[str, Any]:
    """Delete the adapter (the promoted one only with force) and unload it if loaded. The
    embedder the index uses is never deleted; its rollback target only with force."""
    from service.loading import embedders_in_use

    role = embedders_in_use(state.settings).get(adapter_id)
    if role == "embedder" or (role and not force):
        hint = "" if role == "embedder" else "; use force to delete it anyway"
        raise ServiceError(409, "adapter_in_use", f"{adapter_id} is the index's {role}{hint}")
    state.registry().delete(adapter_id, force=force)
    if adapter_id in state.adapter_set().loaded():
        await anyio.to_thread.run_sync(state.adapter_set().unload, adapter_id)
        state.metrics.adapters.set(len(state.adapter_set().loaded()))
    return {"deleted": adapter_id}

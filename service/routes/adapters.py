"""/v1/adapters: list the registry's adapters, load and unload them at runtime (admin)."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter

from service.auth import Admin, Reader
from service.deps import State

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])


@router.get("")
def list_adapters(state: State, _: Reader) -> dict[str, Any]:
    return {"loaded": state.adapters.loaded(), "available": state.adapters.available()}


@router.post("/{name}/load")
async def load(name: str, state: State, _: Admin) -> dict[str, Any]:
    """Load ``DATA_DIR/adapters/<name>`` onto the generator; waits for the running batch."""
    await anyio.to_thread.run_sync(state.adapters.load, name)
    state.metrics.adapters.set(len(state.adapters.loaded()))
    return {"loaded": state.adapters.loaded()}


@router.post("/{name}/unload")
async def unload(name: str, state: State, _: Admin) -> dict[str, Any]:
    await anyio.to_thread.run_sync(state.adapters.unload, name)
    state.metrics.adapters.set(len(state.adapters.loaded()))
    return {"loaded": state.adapters.loaded()}

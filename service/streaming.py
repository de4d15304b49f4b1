"""Bridge engine jobs to async routes: wait (cancelling when the client goes away) and stream.

Waiting happens in worker threads blocked on the job's event or queue, not in a polling loop,
so a hundred waiting requests cost no CPU that the engine could use; a disconnected client is
noticed within ``CHECK_S`` and its job cancelled. A job the engine could not finish is a 500
``generation_failed`` for its own client only, with the engine's one-line message.
"""

from __future__ import annotations

import json
import queue
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import Request

from service.errors import ServiceError
from service.generation.request import GenerationFailed, GenerationRequest

CHECK_S = 0.5
_EMPTY = object()


async def wait(job: GenerationRequest, request: Request) -> GenerationRequest:
    """Wait for ``job``; if the client disconnects first, cancel it (freeing its batch slot)."""
    while not await anyio.to_thread.run_sync(job.done.wait, CHECK_S):
        if await request.is_disconnected():
            job.cancel()
            await anyio.to_thread.run_sync(job.done.wait)
            break
    if job.error is not None:
        raise _public(job.error)
    return job


def _public(error: BaseException) -> BaseException:
    if isinstance(error, GenerationFailed):
        return ServiceError(500, "generation_failed", str(error))
    return error


def _next(job: GenerationRequest) -> Any:
    try:
        return job.deltas.get(timeout=CHECK_S)
    except queue.Empty:
        return _EMPTY


async def deltas(job: GenerationRequest) -> AsyncIterator[str]:
    """Text deltas of ``job`` as they come; cancelling the consumer cancels the job."""
    try:
        while True:
            delta = await anyio.to_thread.run_sync(_next, job)
            if delta is _EMPTY:
                continue
            if delta is None:
                if job.error is not None:
                    raise job.error
                return
            yield delta
    finally:
        if not job.done.is_set():
            job.cancel()


def failure(error: GenerationFailed) -> dict[str, Any]:
    """The error body a stream ends with when its job fails after the response has started."""
    return {"error": {"code": "generation_failed", "message": str(error), "details": None}}


def sse(data: Any, event: str | None = None) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return (f"event: {event}\n" if event else "") + f"data: {payload}\n\n"

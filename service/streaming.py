"""Bridge engine jobs to async routes: wait (cancelling when the client goes away) and stream."""

from __future__ import annotations

import asyncio
import json
import queue
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request

from service.engine import Job

POLL_S = 0.02


async def wait(job: Job, request: Request) -> Job:
    """Wait for ``job``; if the client disconnects first, cancel it (freeing its batch slot)."""
    while not job.done.is_set():
        if await request.is_disconnected():
            job.cancel()
            break
        await asyncio.sleep(POLL_S)
    job.done.wait()
    if job.error is not None:
        raise job.error
    return job


async def deltas(job: Job) -> AsyncIterator[str]:
    """Text deltas of ``job`` as they come; cancelling the consumer cancels the job."""
    try:
        while True:
            try:
                delta = job.deltas.get_nowait()
            except queue.Empty:
                await asyncio.sleep(POLL_S)
                continue
            if delta is None:
                if job.error is not None:
                    raise job.error
                return
            yield delta
    finally:
        if not job.done.is_set():
            job.cancel()


def sse(data: Any, event: str | None = None) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return (f"event: {event}\n" if event else "") + f"data: {payload}\n\n"

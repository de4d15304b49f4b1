"""OpenAI-compatible chat: /v1/chat/completions (plain and streamed) and /v1/models.

The official ``openai`` client works unchanged. Retrieval is on by default: the last user message
is the query and the passages go in front as a fenced system message; the citations come back in
an extra ``citations`` field (``retrieval: false`` in the body turns retrieval off).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from retriever.config import SearchMode
from service.auth import Reader
from service.deps import State
from service.errors import ServiceError
from service.pipeline import CHAT, Ask, mode_for
from service.streaming import deltas, sse, wait

router = APIRouter(prefix="/v1", tags=["openai"])


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str


class Retrieval(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int = Field(4, ge=1)
    mode: SearchMode = "hybrid"
    filters: dict[str, Any] | None = None


class ChatBody(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use
    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0, le=2)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=1)
    retrieval: bool | Retrieval = True


@router.get("/models")
def models(state: State, _: Reader) -> dict[str, Any]:
    """The base model and the loaded adapters."""
    return {
        "object": "list",
        "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "ragtune"}
            for m in state.model_ids()
        ],
    }


@router.post("/chat/completions", response_model=None)
async def chat(
    body: ChatBody, request: Request, state: State, _: Reader
) -> dict[str, Any] | StreamingResponse:
    if body.model not in state.model_ids():
        raise ServiceError(404, "model_not_found", f"no model {body.model!r}; see GET /v1/models")
    opts = body.retrieval if isinstance(body.retrieval, Retrieval) else Retrieval()
    adapter = None if body.model == state.settings.generator else body.model
    ask = Ask(
        [m.model_dump() for m in body.messages],
        mode=mode_for(bool(body.retrieval), adapter),
        k=opts.k,
        search=opts.mode,
        filters=opts.filters,
        adapter=adapter,
        max_new_tokens=body.max_completion_tokens or body.max_tokens,
        stop=[body.stop] if isinstance(body.stop, str) else list(body.stop or []),
        temperature=body.temperature,
        seed=body.seed,
    )
    pipeline = state.pipeline()
    answer = pipeline.submit(await pipeline.aprepare(ask, CHAT))
    job = answer.request
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    citations = answer.citations()

    def usage() -> dict[str, int]:
        return {
            "prompt_tokens": len(job.prompt_ids),
            "completion_tokens": len(job.tokens),
            "total_tokens": len(job.prompt_ids) + len(job.tokens),
        }

    def finish() -> str:
        return "length" if job.finish_reason == "length" else "stop"

    if not body.stream:
        await wait(job, request)
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": body.model,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": finish(),
                    "message": {"role": "assistant", "content": answer.text},
                }
            ],
            "usage": usage(),
            "citations": citations,
        }

    def chunk(delta: dict[str, Any], reason: str | None = None, **extra: Any) -> str:
        return sse(
            {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": body.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
                **extra,
            }
        )

    async def events() -> AsyncIterator[str]:
        yield chunk({"role": "assistant", "content": ""})
        async for delta in deltas(job):
            yield chunk({"content": delta})
        yield chunk({}, finish(), usage=usage(), citations=citations)
        yield sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream")

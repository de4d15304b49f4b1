"""/v1/search and /v1/query: retrieval alone, and answers with citations."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from service.answering import hit_dict, pick_adapter, retrieve
from service.auth import Reader
from service.deps import RetrieverDep, State
from service.errors import ServiceError
from service.streaming import deltas, sse, wait
from tuner.prompts import base_messages, rag_messages

router = APIRouter(prefix="/v1", tags=["query"])


class SearchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1)
    k: int = Field(5, ge=1)
    mode: Literal["dense", "sparse", "hybrid"] = "hybrid"
    filters: dict[str, Any] | None = None


class QueryBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1)
    mode: Literal["base", "rag", "ft", "hybrid"] = "rag"
    k: int = Field(4, ge=1)
    retrieval: Literal["dense", "sparse", "hybrid"] = "hybrid"
    filters: dict[str, Any] | None = None
    adapter: str | None = None
    max_new_tokens: int | None = Field(None, ge=1, description="default: min(128, the limit)")
    stream: bool = False


def _check_limits(state: Any, k: int, text: str, max_new_tokens: int = 0) -> None:
    limits = state.settings.limits
    if max_new_tokens > limits.max_new_tokens:
        raise ServiceError(
            422, "max_new_tokens_too_large", f"max_new_tokens must be <= {limits.max_new_tokens}"
        )
    if k > limits.max_k:
        raise ServiceError(422, "k_too_large", f"k must be <= {limits.max_k}")
    if len(text) > limits.max_question_chars:
        raise ServiceError(
            422, "question_too_long", f"at most {limits.max_question_chars} characters"
        )


@router.post("/search")
def search(body: SearchBody, retriever: RetrieverDep, state: State, _: Reader) -> dict[str, Any]:
    _check_limits(state, body.k, body.query)
    hits = retriever.search(body.query, body.k, body.mode, body.filters, state.reranker)
    return {"results": [hit_dict(h) for h in hits]}


@router.post("/query", response_model=None)
async def query(
    body: QueryBody, request: Request, state: State, _: Reader
) -> dict[str, Any] | StreamingResponse:
    """Answer a question; with ``stream: true``, Server-Sent Events of tokens, then the answer
    with its citations in a final ``done`` event."""
    _check_limits(state, body.k, body.question, body.max_new_tokens or 0)
    adapter = pick_adapter(state, body.mode, body.adapter)
    hits, retrieve_s = (
        await retrieve(state, body.question, body.k, body.retrieval, body.filters)
        if body.mode in ("rag", "hybrid")
        else ([], 0.0)
    )
    messages = (
        rag_messages(body.question, hits)
        if body.mode in ("rag", "hybrid")
        else base_messages(body.question)
    )
    max_new = body.max_new_tokens or min(128, state.settings.limits.max_new_tokens)
    t0 = time.perf_counter()
    job = state.engine.submit(messages, max_new, adapter=adapter)

    def result() -> dict[str, Any]:
        return {
            "answer": job.text.strip(),
            "citations": [hit_dict(h, with_metadata=False) for h in hits],
            "mode": body.mode,
            "adapter": adapter,
            "usage": {"prompt_tokens": len(job.prompt_ids), "completion_tokens": len(job.tokens)},
            "finish_reason": job.finish_reason,
            "timings": {
                "retrieve_s": round(retrieve_s, 4),
                "generate_s": round(time.perf_counter() - t0, 4),
            },
        }

    if not body.stream:
        await wait(job, request)
        return result()

    async def events() -> AsyncIterator[str]:
        async for delta in deltas(job):
            yield sse({"text": delta}, "token")
        yield sse(result(), "done")

    return StreamingResponse(events(), media_type="text/event-stream")

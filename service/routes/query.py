"""/v1/search and /v1/query: retrieval alone, and answers with citations."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import Field

from retriever.config import SearchMode
from service.auth import Reader
from service.bounds import AdapterId, Body, Filters, K, NewTokens, Text
from service.deps import PipelineDep
from service.generation.request import GenerationFailed
from service.pipeline import AnswerModeName, Ask, check_search, citation
from service.streaming import deltas, failure, sse, wait

router = APIRouter(prefix="/v1", tags=["query"])


class SearchBody(Body):
    query: Text = Field(description="at most limits.max_question_chars")
    k: K = Field(5, description="at most limits.max_k")
    mode: SearchMode = "hybrid"
    filters: Filters = None


class QueryBody(Body):
    question: Text = Field(description="at most limits.max_question_chars")
    mode: AnswerModeName = "rag"
    k: K = Field(4, description="at most limits.max_k")
    retrieval: SearchMode = "hybrid"
    filters: Filters = None
    adapter: AdapterId | None = None
    max_new_tokens: NewTokens | None = Field(
        None, description="default: min(128, limits.max_new_tokens); at most that limit"
    )
    stream: bool = False


@router.post("/search")
def search(body: SearchBody, pipeline: PipelineDep, _: Reader) -> dict[str, Any]:
    check_search(pipeline.limits, body.k, body.query)
    ask = Ask.question(body.query, k=body.k, search=body.mode, filters=body.filters)
    return {"results": [citation(h) for h in pipeline.search(ask)]}


@router.post("/query", response_model=None)
async def query(
    body: QueryBody, request: Request, pipeline: PipelineDep, _: Reader
) -> dict[str, Any] | StreamingResponse:
    """Answer a question; with ``stream: true``, Server-Sent Events of tokens, then the answer
    with its citations in a final ``done`` event."""
    ask = Ask.question(
        body.question,
        mode=body.mode,
        k=body.k,
        search=body.retrieval,
        filters=body.filters,
        adapter=body.adapter,
        max_new_tokens=body.max_new_tokens,
    )
    answer = pipeline.submit(await pipeline.aprepare(ask))

    def result() -> dict[str, Any]:
        return {
            "id": answer.id,
            "answer": answer.text,
            "citations": answer.citations(),
            "mode": body.mode,
            "adapter": answer.prepared.adapter,
            "usage": answer.usage(),
            "finish_reason": answer.request.finish_reason,
            "timings": answer.timings(),
        }

    if not body.stream:
        await wait(answer.request, request)
        return result()

    async def events() -> AsyncIterator[str]:
        try:
            async for delta in deltas(answer.request):
                yield sse({"text": delta}, "token")
        except GenerationFailed as exc:
            yield sse(failure(exc), "error")
            return
        yield sse(result(), "done")

    # the id before any token, for a client that stops reading early
    headers = {"X-Answer-Id": answer.id}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

"""/v1/search and /v1/query: retrieval alone, and answers with citations."""

from __future__ import annotations

import threading
import time
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from service.auth import Reader
from service.deps import RetrieverDep, State
from service.errors import ServiceError
from service.generate import complete
from service.prompting import base_messages, rag_messages

router = APIRouter(prefix="/v1", tags=["query"])
_generate_lock = threading.Lock()  # one generation at a time until the batching engine lands


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


def _hit(h: Any) -> dict[str, Any]:
    return {
        "doc_id": h.doc_id,
        "chunk_id": h.chunk_id,
        "start": h.start,
        "end": h.end,
        "score": h.score,
        "text": h.text,
        "metadata": h.metadata,
    }


@router.post("/search")
def search(body: SearchBody, retriever: RetrieverDep, state: State, _: Reader) -> dict[str, Any]:
    _check_limits(state, body.k, body.query)
    hits = retriever.search(body.query, body.k, body.mode, body.filters, state.reranker)
    return {"results": [_hit(h) for h in hits]}


@router.post("/query")
def query(body: QueryBody, retriever: RetrieverDep, state: State, _: Reader) -> dict[str, Any]:
    _check_limits(state, body.k, body.question, body.max_new_tokens or 0)
    if body.mode in ("ft", "hybrid"):
        raise ServiceError(
            409,
            "no_adapter",
            f"mode {body.mode!r} needs a fine-tuned adapter and "
            "none exists yet; train one with 'ragtune tune', or use mode rag",
        )
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    hits = (
        retriever.search(body.question, body.k, body.retrieval, body.filters, state.reranker)
        if body.mode == "rag"
        else []
    )
    timings["retrieve_s"] = round(time.perf_counter() - t0, 4)
    messages = (
        rag_messages(body.question, hits) if body.mode == "rag" else base_messages(body.question)
    )
    max_new = body.max_new_tokens or min(128, state.settings.limits.max_new_tokens)
    t0 = time.perf_counter()
    with _generate_lock:
        out = complete(state.generator, messages, max_new)
    timings["generate_s"] = round(time.perf_counter() - t0, 4)
    citations = [{k: v for k, v in _hit(h).items() if k != "metadata"} for h in hits]
    return {
        "answer": out.text,
        "citations": citations,
        "mode": body.mode,
        "adapter": None,
        "usage": {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens},
        "timings": timings,
    }

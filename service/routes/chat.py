"""OpenAI-compatible chat: /v1/chat/completions (plain and streamed) and /v1/models.

The official ``openai`` client works unchanged. Retrieval is on by default: the last user message
is the query and the passages go in front as a fenced system message; the citations come back in
an extra ``citations`` field (``retrieval: false`` in the body turns retrieval off).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import ConfigDict, Field

from retriever.config import SearchMode
from service.auth import Reader
from service.bounds import (
    MESSAGES_MAX,
    QUESTION_MAX_CHARS,
    TEMPERATURE_MAX,
    Body,
    Filters,
    K,
    ModelName,
    NewTokens,
    Seed,
    StopList,
)
from service.deps import State
from service.errors import ServiceError
from service.generation.request import GenerationFailed
from service.pipeline import CHAT, Answer, Ask, mode_for
from service.runtime import public_name
from service.state import AppState
from service.streaming import deltas, failure, sse, wait

router = APIRouter(prefix="/v1", tags=["openai"])


class Message(Body):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=QUESTION_MAX_CHARS, description="limits.max_question_chars")


class Retrieval(Body):
    k: K = Field(4, description="at most limits.max_k")
    mode: SearchMode = "hybrid"
    filters: Filters = None


class ChatBody(Body):
    # strict like every body, but OpenAI clients send fields we do not use
    model_config = ConfigDict(extra="ignore", strict=True)
    model: ModelName
    messages: list[Message] = Field(
        min_length=1, max_length=MESSAGES_MAX, description="at most limits.max_messages"
    )
    stream: bool = False
    max_tokens: NewTokens | None = Field(None, description="at most limits.max_new_tokens")
    max_completion_tokens: NewTokens | None = Field(
        None, description="at most limits.max_new_tokens"
    )
    temperature: float = Field(0.0, ge=0, le=TEMPERATURE_MAX)
    stop: StopList | None = None
    seed: Seed | None = None
    n: int = Field(1, ge=1, le=1)
    retrieval: bool | Retrieval = True


def base_id(state: AppState) -> str:
    """The base model's id in /v1/models and in replies: a folder is named by its last part."""
    identity = state.generator.identity if state.generator is not None else {}
    return public_name(state.settings.generator, identity.get("hub_id"))


@router.get("/models")
def models(state: State, _: Reader) -> dict[str, Any]:
    """The base model (by its public id), then the adapters chat can name."""
    adapters = [m for m in state.model_ids() if m != state.settings.generator]
    return {
        "object": "list",
        "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "ragtune"}
            for m in [base_id(state), *adapters]
        ],
    }


@router.post("/chat/completions", response_model=None)
async def chat(
    body: ChatBody, request: Request, state: State, _: Reader
) -> dict[str, Any] | StreamingResponse:
    base = base_id(state)
    if body.model in (base, state.settings.generator):  # the base model: its id or its setting
        adapter = None
    elif body.model in state.model_ids():
        adapter = body.model
    else:
        raise ServiceError(404, "model_not_found", f"no model {body.model!r}; see GET /v1/models")
    pipeline = state.pipeline()
    # a limit on the answer's length names the field the client sent it in
    named = "max_tokens" if body.max_completion_tokens is None else "max_completion_tokens"
    surface = dataclasses.replace(CHAT, max_new_field=named)
    answer = pipeline.submit(await pipeline.aprepare(_ask(body, adapter), surface))
    reply = _Reply(answer, adapter or base)
    if not body.stream:
        await wait(answer.request, request)
        return reply.completion()
    return StreamingResponse(reply.events(), media_type="text/event-stream")


def _ask(body: ChatBody, adapter: str | None) -> Ask:
    """The chat as the pipeline's ask: retrieval on (rag, hybrid) or off, adapter by model."""
    opts = body.retrieval if isinstance(body.retrieval, Retrieval) else Retrieval()
    return Ask(
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


class _Reply:
    """An answer in OpenAI's shapes: one completion, or its chunks as Server-Sent Events."""

    def __init__(self, answer: Answer, model: str) -> None:
        self.answer, self.model = answer, model
        self.id, self.created = answer.id, int(time.time())  # the id feedback names

    def usage(self) -> dict[str, int]:
        used = self.answer.usage()
        return {**used, "total_tokens": used["prompt_tokens"] + used["completion_tokens"]}

    def finish(self) -> str:
        return "length" if self.answer.request.finish_reason == "length" else "stop"

    def completion(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": self.finish(),
                    "message": {"role": "assistant", "content": self.answer.text},
                }
            ],
            "usage": self.usage(),
            "citations": self.answer.citations(),
        }

    def chunk(self, delta: dict[str, Any], reason: str | None = None, **extra: Any) -> str:
        return sse(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
                **extra,
            }
        )

    async def events(self) -> AsyncIterator[str]:
        yield self.chunk({"role": "assistant", "content": ""})
        try:
            async for delta in deltas(self.answer.request):
                yield self.chunk({"content": delta})
        except GenerationFailed as exc:  # the openai client raises APIError on this chunk
            yield sse(failure(exc))
            yield sse("[DONE]")
            return
        citations = self.answer.citations()
        yield self.chunk({}, self.finish(), usage=self.usage(), citations=citations)
        yield sse("[DONE]")

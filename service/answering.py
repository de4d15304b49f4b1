"""What a question becomes before generation: retrieval, the grounded prompt, the citations.

Shared by /v1/query and /v1/chat/completions so both cite exactly the passages in the prompt.
"""

from __future__ import annotations

import time
from typing import Any

import anyio

from service.errors import ServiceError
from tuner.prompts import rag_messages


def hit_dict(h: Any, with_metadata: bool = True) -> dict[str, Any]:
    out = {
        "doc_id": h.doc_id,
        "chunk_id": h.chunk_id,
        "start": h.start,
        "end": h.end,
        "score": h.score,
        "text": h.text,
    }
    if with_metadata:
        out["metadata"] = h.metadata
    return out


def pick_adapter(state: Any, mode: str, adapter: str | None) -> str | None:
    """The adapter a request runs with: ft and hybrid need one (named; else the promoted one,
    loaded on first use; else the only one loaded); base and rag run on the base model unless
    one is named."""
    loaded = state.adapters.loaded() if state.adapters is not None else []
    if adapter is not None:
        if adapter not in loaded:
            raise ServiceError(
                404,
                "adapter_not_found",
                f"adapter {adapter!r} is not loaded; "
                "see GET /v1/adapters and POST /v1/adapters/{name}/load",
            )
        return adapter
    if mode not in ("ft", "hybrid"):
        return None
    promoted = _promoted(state)
    if promoted is not None:
        if promoted not in loaded:
            state.adapters.load(promoted)
            state.metrics.adapters.set(len(state.adapters.loaded()))
        return promoted
    if len(loaded) == 1:
        return str(loaded[0])
    if not loaded:
        raise ServiceError(
            409,
            "no_adapter",
            f"mode {mode!r} needs a fine-tuned adapter and "
            "none is loaded or promoted: train one with 'ragtune tune' (or POST /v1/tune/jobs), "
            "then promote it (POST /v1/adapters/{id}/promote) or load it "
            "(POST /v1/adapters/{id}/load), or use mode rag or base",
        )
    raise ServiceError(
        409,
        "adapter_required",
        f"several adapters are loaded ({loaded}) and none is promoted; name one with 'adapter'",
    )


def registry_of(state: Any) -> Any:
    from tuner.registry import Registry

    return Registry(state.settings.layout.adapters)


def _promoted(state: Any) -> str | None:
    if state.adapters is None:
        return None
    record = registry_of(state).promoted()
    return None if record is None or not record.servable else str(record.id)


async def retrieve(
    state: Any, question: str, k: int, mode: str, filters: dict[str, Any] | None
) -> tuple[list[Any], float]:
    t0 = time.perf_counter()
    hits = await anyio.to_thread.run_sync(
        lambda: state.retriever.search(question, k, mode, filters, state.reranker)
    )
    return hits, time.perf_counter() - t0


def grounded_chat(messages: list[dict[str, str]], hits: list[Any]) -> list[dict[str, str]]:
    """The user's chat with the passages put in front as a fenced system message."""
    question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    grounded = rag_messages(question, hits)[0]
    own_system = [m for m in messages if m["role"] == "system"]
    rest = [m for m in messages if m["role"] != "system"]
    if own_system:
        grounded = {
            "role": "system",
            "content": "\n\n".join(m["content"] for m in own_system) + "\n\n" + grounded["content"],
        }
    return [grounded, *rest]

"""FastAPI dependencies: the loaded state, the retriever and the generator, via ``Depends``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from retriever.index import Retriever
from service.errors import ServiceError


def get_state(request: Request) -> Any:
    state = request.app.state.ragtune
    if not state.ready:
        raise ServiceError(503, "not_ready", "models and index are still loading")
    return state


State = Annotated[Any, Depends(get_state)]


def get_retriever(state: State) -> Retriever:
    return state.retriever  # type: ignore[no-any-return]


RetrieverDep = Annotated[Retriever, Depends(get_retriever)]

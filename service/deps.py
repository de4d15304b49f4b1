"""FastAPI dependencies: the loaded state, the index and the answering pipeline, via ``Depends``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from retriever.index import Retriever
from service.errors import ServiceError
from service.pipeline import Pipeline
from service.state import AppState


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.ragtune
    if not state.ready:
        raise ServiceError(503, "not_ready", "models and index are still loading")
    return state


State = Annotated[AppState, Depends(get_state)]


def get_retriever(state: State) -> Retriever:
    return state.index()


RetrieverDep = Annotated[Retriever, Depends(get_retriever)]


def get_pipeline(state: State) -> Pipeline:
    return state.pipeline()


PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]

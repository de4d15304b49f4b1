"""/v1/index: the live index's embedder, and re-embedding it (to a fine-tuned embedder, another
model, or back to the previous one) in the background with an atomic switch."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import Field, model_validator

from service.auth import Admin, Reader
from service.bounds import AdapterId, Body, ModelName
from service.deps import State
from service.errors import ServiceError
from service.reindexing import NoRollback, ReindexBusy, ReindexStatus
from service.runtime import public_name

router = APIRouter(prefix="/v1/index", tags=["index"])


class ReindexBody(Body):
    adapter: AdapterId | None = Field(None, description="a fine-tuned embedder's registry id")
    embedder: ModelName | None = Field(None, description="a preset, hub id or local folder")
    rollback: bool = Field(False, description="back to the embedder before the last switch")
    refresh: bool = Field(
        False,
        description="with the embedder in use (an index embedded without its chunks' context, "
        "or vectors to rebuild)",
    )

    @model_validator(mode="after")
    def _one(self) -> ReindexBody:
        given = [self.adapter is not None, self.embedder is not None, self.rollback, self.refresh]
        if sum(given) != 1:
            raise ValueError("give exactly one of adapter, embedder, rollback, refresh")
        return self


@router.get("")
def show(state: State, _: Reader) -> dict[str, Any]:
    """Documents, chunks, the embedder in use, the rollback target and the re-embedding."""
    retriever = state.index()
    return {
        "documents": len(retriever),
        "chunks": retriever.chunk_count,
        "embedder": shown(retriever.embedder.identity),
        "previous_embedder": shown(retriever.previous_embedder()),
        # chunks embedded without their title and section (an older index) until re-embedded
        "needs_reembedding": retriever.needs_reembedding,
        "fusion": retriever.fusion_shares(),
        "reindex": status_shown(state.reindexer.status()),
    }


def shown(identity: dict[str, Any] | None) -> dict[str, Any] | None:
    """An embedder's identity as clients read it: named by its public name, never a folder."""
    if identity is None or not isinstance(identity.get("name"), str):
        return identity
    return {**identity, "name": public_name(identity["name"], identity.get("hub_id"))}


def status_shown(status: ReindexStatus) -> dict[str, Any]:
    """A re-embedding's status as clients read it: the target embedder by its name's last part
    (a folder is never shown; a hub id shows its model part, as the request gave no kind)."""
    shown = status.to_dict()
    target = shown.get("target")
    if isinstance(target, dict) and isinstance(target.get("embedder"), str):
        shown["target"] = {**target, "embedder": public_name(target["embedder"])}
    return shown


@router.get("/reindex")
def reindex_status(state: State, _: Reader) -> dict[str, Any]:
    return status_shown(state.reindexer.status())


@router.post("/reindex", status_code=202)
def reindex(body: ReindexBody, state: State, _: Admin) -> dict[str, Any]:
    """Start re-embedding; searches and writes go on and the switch is atomic (409 while
    another one runs)."""
    try:
        status = state.reindexer.start(body.model_dump(exclude_defaults=True), reason="api")
    except ReindexBusy as exc:
        raise ServiceError(409, "reindex_running", str(exc)) from None
    except NoRollback as exc:
        raise ServiceError(409, "no_rollback", str(exc)) from None
    except ValueError as exc:
        raise ServiceError(422, "invalid_target", str(exc)) from None
    return status_shown(status)

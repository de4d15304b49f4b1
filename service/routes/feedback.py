"""Ratings of answers: POST /v1/feedback and GET /v1/feedback.

One rating per answer and key (a second replaces the first), for answers the answer log still
holds. A rating is ``stale`` once a passage its answer was shown has changed or its document is
gone (the passage's text hash against the document now), as adapters are marked stale.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import Field

from retriever.errors import DocumentNotFound
from service.answerlog import AnswerLog, sha256
from service.auth import Reader
from service.bounds import OFFSET_MAX, PAGE_MAX, Body
from service.deps import State
from service.errors import ServiceError

router = APIRouter(prefix="/v1/feedback", tags=["feedback"])

CORRECTION_MAX_CHARS = 8000
COMMENT_MAX_CHARS = 2000
ANSWER_ID_MAX_CHARS = 64
Rating = Literal["up", "down"]


class FeedbackBody(Body):
    answer_id: str = Field(min_length=1, max_length=ANSWER_ID_MAX_CHARS)
    rating: Rating
    correction: str | None = Field(
        None, min_length=1, max_length=CORRECTION_MAX_CHARS, description="a better answer"
    )
    comment: str | None = Field(None, min_length=1, max_length=COMMENT_MAX_CHARS)


def answer_log(state: Any) -> AnswerLog:
    if state.answers is None:
        raise ServiceError(
            409, "answer_log_off", "feedback needs the answer log: set answer_log.enabled"
        )
    log: AnswerLog = state.answers
    try:
        log.flush()  # an answer that just finished is rateable at once
    except TimeoutError:
        raise ServiceError(
            503, "answer_log_busy", "the answer log is behind; retry", {"retry_after": 5}
        ) from None
    return log


@router.post("", response_model=None)
def rate(body: FeedbackBody, state: State, who: Reader) -> JSONResponse:
    """Rate an answer (201; 200 when this key's earlier rating is replaced)."""
    log = answer_log(state)
    try:
        row, created = log.rate(
            body.answer_id, who.name, body.rating, body.correction, body.comment
        )
    except LookupError:
        raise ServiceError(
            404,
            "answer_not_found",
            f"no answer {body.answer_id!r} is kept (unknown, or past answer_log.retention_days)",
            {"loc": ["body", "answer_id"]},
        ) from None
    return JSONResponse(shown(row, state), status_code=201 if created else 200)


@router.get("")
def list_feedback(
    state: State,
    who: Reader,
    rating: Rating | None = None,
    answer_id: Annotated[str | None, Query(min_length=1, max_length=ANSWER_ID_MAX_CHARS)] = None,
    since: Annotated[float | None, Query(ge=0, le=1e11)] = None,
    offset: Annotated[int, Query(ge=0, le=OFFSET_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 50,
) -> dict[str, Any]:
    """Ratings, newest first, with their answers; filter by rating, answer or update time. A
    key sees its own ratings; an admin key sees everyone's (they hold users' questions)."""
    own = None if who.allows("admin") else who.name
    total, rows = answer_log(state).feedback(
        rating=rating, answer_id=answer_id, key_name=own, since=since, offset=offset, limit=limit
    )
    return {"total": total, "offset": offset, "feedback": [shown(r, state) for r in rows]}


def shown(row: dict[str, Any], state: Any) -> dict[str, Any]:
    """A rating as the API shows it: with its answer and whether that answer went stale."""
    out = dict(row)
    answer = out.get("answer")
    out["stale"] = stale_reasons(answer["passages"], state.retriever) if answer else []
    return out


def stale_reasons(passages: list[dict[str, Any]], retriever: Any) -> list[str]:
    """Why the passages an answer was shown no longer stand, one line each (none: fresh)."""
    if retriever is None:
        return []
    reasons = []
    for p in passages:
        try:
            doc = retriever.get(p["doc_id"])
        except DocumentNotFound:
            reasons.append(f"document {p['doc_id']!r} was deleted")
            continue
        if sha256(doc.text[p["start"] : p["end"]]) != p["sha256"]:
            reasons.append(f"document {p['doc_id']!r} changed at {p['start']}-{p['end']}")
    return list(dict.fromkeys(reasons))

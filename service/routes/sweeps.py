"""/v1/tune/sweeps: follow, cancel and read the reports of hyperparameter sweeps.

A sweep starts as a tuning job does, ``POST /v1/tune/jobs`` with a ``sweep`` block in the body
(``service.routes.tune``); the answer names the sweep. Each of its trials is a tuning job of its
own (``GET /v1/tune/jobs/{id}`` shows its progress; the sweep names the one it is training).
``service.sweeps`` drives them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from service.auth import Reader, Writer
from service.deps import State
from service.errors import ServiceError
from service.sweeps import SweepFinished, SweepNotFound

router = APIRouter(prefix="/v1/tune/sweeps", tags=["tuning"])
HTML_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


class TrialOut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    number: int
    state: str = Field(description="running, complete, pruned or fail")
    params: dict[str, Any]
    value: float | None = Field(description="the objective, once complete")
    adapter: str | None = Field(description="its adapter in the registry, once complete")
    seconds: float | None
    baseline: bool = Field(description="whether it trained the recipe's own values")
    error: str | None
    job: str | None = Field(description="the tuning job that trains it")
    last_update: int | None = Field(description="the last update it reported a loss at")
    repeats: int | None = Field(
        None, description="the trial whose values it repeats (its value stands, not retrained)"
    )


class SweepOut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    name: str
    component: str
    method: str
    state: str = Field(description="queued, running, succeeded, failed or cancelled")
    objective: str
    direction: str
    planned_trials: int
    timeout_s: float | None
    spent_s: float
    space: dict[str, dict[str, Any]]
    defaults: dict[str, Any] = Field(description="the recipe's own value of each searched key")
    trials: list[TrialOut]
    best: TrialOut | None = Field(description="named, never promoted: gate it to promote it")
    baseline: TrialOut | None
    current_job: str | None
    cancel_requested: bool
    error: str | None = None
    report: dict[str, str] | None = Field(description="its report's files, once it has ended")


class SweepsOut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sweeps: list[SweepOut]


def sweep_out(summary: dict[str, Any]) -> SweepOut:
    def trial(t: dict[str, Any] | None) -> TrialOut | None:
        if t is None:
            return None
        body = {k: v for k, v in t.items() if k != "key"}
        return TrialOut(**body, job=t.get("key"))

    fields = {k: v for k, v in summary.items() if k in SweepOut.model_fields}
    fields["trials"] = [trial(t) for t in summary["trials"]]
    fields["best"], fields["baseline"] = trial(summary["best"]), trial(summary["baseline"])
    return SweepOut(**fields)


@contextmanager
def _domain() -> Iterator[None]:
    try:
        yield
    except SweepNotFound as exc:
        raise ServiceError(404, "sweep_not_found", f"no sweep {exc}") from None
    except SweepFinished as exc:
        raise ServiceError(409, "sweep_finished", str(exc)) from None


@router.get("")
def list_sweeps(state: State, _: Reader) -> SweepsOut:
    return SweepsOut(sweeps=[sweep_out(s) for s in state.tune_sweeps().list()])


@router.get("/{sweep_id}")
def get(sweep_id: str, state: State, _: Reader) -> SweepOut:
    with _domain():
        return sweep_out(state.tune_sweeps().get(sweep_id))


@router.post("/{sweep_id}/cancel", status_code=202)
def cancel(sweep_id: str, state: State, _: Writer) -> SweepOut:
    """Cancel the sweep: its running trial stops within seconds, no other trial starts."""
    with _domain():
        return sweep_out(state.tune_sweeps().cancel(sweep_id))


@router.get("/{sweep_id}/report", response_class=Response)
def report(
    sweep_id: str, state: State, _: Reader, format: Literal["html", "md"] = "html"
) -> Response:
    """The sweep's report (self-contained HTML, or Markdown); 409 until the sweep has ended."""
    with _domain():
        summary = state.tune_sweeps().get(sweep_id)
        folder = state.tune_sweeps().folder(sweep_id)
    if not summary.get("report"):
        raise ServiceError(
            409, "sweep_not_ended", f"sweep {sweep_id} is {summary['state']}; no report yet"
        )
    name = f"report.{format}"
    media = "text/html; charset=utf-8" if format == "html" else "text/markdown; charset=utf-8"
    headers = {"X-Content-Type-Options": "nosniff"}
    if format == "html":
        headers["Content-Security-Policy"] = HTML_POLICY
    return Response((folder / name).read_bytes(), media_type=media, headers=headers)

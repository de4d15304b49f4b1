"""One error shape for every response: {"error": {"code", "message", "details"}}.

Installs the handlers that map ``ServiceError`` and the libraries' domain exceptions
(``service.errors.DOMAIN``) to HTTP statuses; unexpected errors become a 500 that says nothing
of internals. ``HTTPException`` appears only in ``service``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from service.errors import DOMAIN, ServiceError

log = logging.getLogger("service.errors")
MAX_DETAILS = 20  # validation errors listed in one 422 (the rest counted)
UNPARSABLE_BODY = "There was an error parsing the body"  # FastAPI's 400 when json.loads raises


def error(status: int, code: str, message: str, details: Any = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details}}
    headers = {}
    if isinstance(details, dict) and "retry_after" in details:
        headers["Retry-After"] = str(details["retry_after"])
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service(_: Request, exc: ServiceError) -> JSONResponse:
        return error(exc.status, exc.code, exc.message, exc.details)

    for exc_type, (status, code) in DOMAIN.items():

        async def _domain(
            _: Request, exc: Exception, status: int = status, code: str = code
        ) -> JSONResponse:
            return error(status, code, str(exc))

        app.add_exception_handler(exc_type, _domain)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        details = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in errors[:MAX_DETAILS]]
        if len(errors) > MAX_DETAILS:
            details.append({"loc": [], "msg": f"and {len(errors) - MAX_DETAILS} more errors"})
        return error(422, "invalid_request", "the request is not valid", details)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == UNPARSABLE_BODY:
            message = "the body is not valid JSON (or a number in it has too many digits)"
            return error(422, "invalid_request", message, [{"loc": ["body"], "msg": message}])
        return error(exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error(500, "internal_error", "internal error; see the server log")

    app.add_middleware(Crashes)  # the first added: the innermost, right around the routes


class Crashes:
    """A route's unexpected exception as the same 500, answered here: Starlette's outermost
    handler would send it and then raise again, and the server would drop the client's
    keep-alive connection with it (the client's next request failing too)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            if started:
                raise  # a stream already under way: nothing else can be sent
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            await error(500, "internal_error", "internal error; see the server log")(
                scope, receive, send
            )

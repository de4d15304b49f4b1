"""Request body limit as pure ASGI middleware: a 413 before the app sees a body over the limit.

A declared ``Content-Length`` over the limit is refused at once. A body sent without one
(chunked) is read here, up to the limit, and handed on to the app only when it fits; the app's
own body parsing never has to recognise an oversized body.
"""

from __future__ import annotations

from typing import Any

from service.responses import error


class BodyLimit:
    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit():
            if int(declared) > self.max_bytes:
                await self._reject(scope, receive, send)
            else:
                await self.app(scope, receive, send)  # the server holds the body to its length
            return
        buffered: list[dict] = []
        seen = 0
        while True:
            message = await receive()
            buffered.append(message)
            if message["type"] != "http.request":
                break  # the client went away; the app will see it
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            if not message.get("more_body"):
                break

        async def replay() -> dict:
            return buffered.pop(0) if buffered else await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: dict, receive: Any, send: Any) -> None:
        message = f"request body over {self.max_bytes} bytes"
        await error(413, "body_too_large", message)(scope, receive, send)

"""What a web page may make this server do: Host, Origin and bound-socket checks as pure ASGI
middleware, in front of everything else (403 before keys, limits or the app see the request).

With auth off the server belongs to one local user. It answers only on a loopback socket (the
local address each connection came in on, whatever address the server was told to bind), only to
loopback ``Host`` names (so a DNS-rebound page gets nothing), and it refuses a state-changing
request (POST, PUT, PATCH, DELETE) that a page of another origin sent: a form or multipart post
needs no CORS preflight, so only this check stops it. With auth on, a state-changing request
that carries an ``Origin`` must be same-origin or listed in ``Settings.allowed_origins``.
A request with no ``Origin`` and no cross-site ``Sec-Fetch-Site`` (curl, scripts, the OpenAI
client) is not a browser page's and passes. Knows nothing of keys: ``service.auth`` runs inside.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import Headers

from service.auth import is_loopback
from service.responses import error
from service.settings import Settings

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DEFAULT_PORTS = {"http": 80, "https": 443}
CROSS_SITE = frozenset({"cross-site", "same-site"})  # Sec-Fetch-Site values from another origin


def split_host(value: str) -> tuple[str, int | None] | None:
    """``host[:port]`` (``[v6]:port`` for IPv6) as (lower-case host, port), or None if malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1 :]
    else:
        if value.count(":") > 1:
            return None  # a bare IPv6 address must be bracketed in Host
        host, colon, port = value.partition(":")
        rest = colon + port
    if not host:
        return None
    if not rest:
        return host, None
    if not rest.startswith(":") or not rest[1:].isdigit():
        return None
    return host, int(rest[1:])


def same_origin(origin: str, host: str, scheme: str) -> bool:
    """Whether ``Origin`` names this server as the request reached it (scheme, host and port)."""
    origin_scheme, sep, authority = origin.strip().lower().partition("://")
    if not sep or origin_scheme not in DEFAULT_PORTS or any(c in authority for c in "/?#@"):
        return False
    theirs, ours = split_host(authority), split_host(host)
    if theirs is None or ours is None or origin_scheme != scheme:
        return False
    default = DEFAULT_PORTS[scheme]
    return theirs[0] == ours[0] and (theirs[1] or default) == (ours[1] or default)


class BrowserGuard:
    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.local_only = settings.auth_disabled
        # with auth off only the server's own pages may write; the list is for auth on
        allowed = [] if settings.auth_disabled else settings.allowed_origins
        self.allowed = frozenset(allowed)  # normalised by Settings, as _foreign reads Origin

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan; the app has no websocket routes
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
        else:
            await error(403, *refusal)(scope, receive, send)

    def refusal(self, scope: dict) -> tuple[str, str] | None:
        """(code, message) when the request must be refused, else None."""
        headers = Headers(scope=scope)
        host = headers.get("host")
        if self.local_only:
            server = scope.get("server")  # None on a unix socket, which is local by nature
            if server is not None and not is_loopback(str(server[0])):
                return (
                    "not_loopback",
                    "auth is off, so this server answers only on a loopback address; "
                    "configure RAGTUNE_API_KEYS to serve on other addresses",
                )
            name = split_host(host or "")
            if name is None or not is_loopback(name[0]):
                return (
                    "host_not_allowed",
                    f"auth is off, so only loopback Host names are served (localhost, "
                    f"127.0.0.0/8, [::1]), not {(host or '')[:100]!r}",
                )
        if scope["method"] in STATE_CHANGING and self._foreign(headers, host, scope["scheme"]):
            return (
                "origin_not_allowed",
                "this request came from a web page of another origin (its Origin or "
                "Sec-Fetch-Site header says so); state-changing requests are refused from "
                "origins not allowed by RAGTUNE_ALLOWED_ORIGINS (auth on only)",
            )
        return None

    def _foreign(self, headers: Headers, host: str | None, scheme: str) -> bool:
        origin = headers.get("origin")
        if origin is None:
            return headers.get("sec-fetch-site", "").lower() in CROSS_SITE
        if host is not None and same_origin(origin, host, scheme):
            return False
        return origin.strip().lower().rstrip("/") not in self.allowed

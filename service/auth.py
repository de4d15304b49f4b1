"""API keys with scopes, a throttle on failed keys per client address, a per-key rate limit.

Keys arrive as ``Authorization: Bearer KEY`` (what the OpenAI client sends) or ``X-API-Key``.
Settings hold only their sha256; a presented key is hashed and compared against every stored
hash with ``hmac.compare_digest``, so timing reveals neither which key nor how much matched.
``Authenticate`` (pure ASGI middleware) checks the key before the app reads a body, so a request
without a valid key gets 401 whatever its body; the routes' ``require`` dependency then checks the
scope (403) and the per-key rate limit (429). Scopes nest: admin includes write, write includes
read. With ``auth_disabled`` every request acts as a local admin; ``ragtune serve`` then refuses
any non-loopback address, and ``service.guard`` any request that did not come in on loopback.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.datastructures import Headers

from service.errors import ServiceError
from service.responses import error
from service.settings import Settings

RANK = {"read": 0, "write": 1, "admin": 2}


@dataclass(frozen=True)
class Principal:
    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return any(RANK[s] >= RANK[scope] for s in self.scopes)


LOCAL_ADMIN = Principal("local", frozenset({"admin"}))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings) -> None:
    """Refuse to serve without auth on anything but loopback, or with auth but no keys."""
    if settings.auth_disabled and not is_loopback(settings.host):
        raise ValueError(
            f"RAGTUNE_AUTH_DISABLED=1 is only allowed on loopback, not {settings.host}"
            "; configure RAGTUNE_API_KEYS to serve on other addresses"
        )
    if not settings.auth_disabled and not settings.api_keys:
        raise ValueError(
            "no API keys configured: set RAGTUNE_API_KEYS (see docs/configuration.md)"
            ", or RAGTUNE_AUTH_DISABLED=1 to serve on loopback without keys"
        )


# served to anyone: health for probes, the schema (the same for every install); the docs pages
# exist only when Settings.api_docs is on
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/docs", "/redoc", "/"})
# the web console's static files hold no data: the page asks for a key before it calls the API
PUBLIC_PREFIXES = ("/console/",)


def presented_key(headers: Mapping[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return headers.get("x-api-key") or None


def authenticate(settings: Settings, key: str | None) -> Principal:
    if settings.auth_disabled:
        return LOCAL_ADMIN
    if not key:
        raise ServiceError(401, "unauthenticated", "an API key is required (Authorization: Bearer)")
    digest = hashlib.sha256(key.encode()).hexdigest()
    found = None
    for k in settings.api_keys:  # no early exit: every stored key is compared
        if hmac.compare_digest(digest, k.sha256 or ""):
            found = k
    if found is None:
        raise ServiceError(401, "invalid_key", "the API key is not valid")
    return Principal(found.name, frozenset(found.scopes))


class RateLimiter:
    """A token bucket per key: ``per_minute`` requests, refilled continuously; 0 = no limit.

    At most ``max_tracked`` keys are remembered (client addresses are many): past it, keys whose
    bucket has refilled are forgotten first, then the oldest.
    """

    def __init__(self, per_minute: int, max_tracked: int = 100_000) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self.max_tracked = max_tracked
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """Spend one request: 0 if allowed now, else seconds until one would be."""
        if self.capacity <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens = self._tokens(key, now)
            if key not in self._buckets and len(self._buckets) >= self.max_tracked:
                self._forget(now)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate

    def wait(self, key: str) -> float:
        """Seconds until ``key`` may spend a request (0: now), spending nothing."""
        if self.capacity <= 0:
            return 0.0
        with self._lock:
            tokens = self._tokens(key, time.monotonic())
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def _tokens(self, key: str, now: float) -> float:
        tokens, last = self._buckets.get(key, (self.capacity, now))
        return min(self.capacity, tokens + (now - last) * self.rate)

    def _forget(self, now: float) -> None:
        for key in [k for k in self._buckets if self._tokens(k, now) >= self.capacity]:
            del self._buckets[key]
        while len(self._buckets) >= self.max_tracked:
            del self._buckets[next(iter(self._buckets))]


class Authenticate:
    """Pure ASGI middleware: every path but ``PUBLIC_PATHS`` needs a valid key (401) before the
    app reads the body. A client address with ``Limits.failed_auth_per_minute`` wrong keys in
    the last minute gets 429 for any key it presents until its bucket refills: checking the key
    then would let a guess that hits through. A request with no key is not a guess (401)."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.failures = RateLimiter(settings.limits.failed_auth_per_minute)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] in PUBLIC_PATHS
            or (scope["method"] in ("GET", "HEAD") and scope["path"].startswith(PUBLIC_PREFIXES))
            or scope["method"] == "OPTIONS"  # a CORS preflight carries no key
        ):
            await self.app(scope, receive, send)
            return
        try:
            principal = LOCAL_ADMIN if self.settings.auth_disabled else self.check(scope)
            spend(scope["app"].state.ragtune.limiter, principal)  # 429 before any body too
        except ServiceError as exc:
            await error(exc.status, exc.code, exc.message, exc.details)(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    def check(self, scope: dict) -> Principal:
        key = presented_key(Headers(scope=scope))
        if not key:
            return authenticate(self.settings, key)  # 401: no key is not a failed guess
        client = scope.get("client")
        address = str(client[0]) if client else "unknown"
        wait = self.failures.wait(address)
        if wait > 0:
            raise ServiceError(
                429,
                "too_many_failed_keys",
                "too many wrong API keys from this address; wait and retry",
                {"retry_after": math.ceil(wait)},
            )
        try:
            return authenticate(self.settings, key)
        except ServiceError:
            self.failures.take(address)
            raise


def spend(limiter: RateLimiter, principal: Principal) -> None:
    """One request of ``principal``'s per-key rate limit, or a 429 saying when to retry."""
    wait = limiter.take(principal.name)
    if wait > 0:
        raise ServiceError(
            429, "rate_limited", "too many requests for this key", {"retry_after": math.ceil(wait)}
        )


def require(scope: str):  # noqa: ANN201 - returns a FastAPI dependency
    def dependency(request: Request) -> Principal:
        state = request.app.state.ragtune
        principal = request.scope.get("state", {}).get("principal")  # set by Authenticate
        if principal is None:  # an app built without Authenticate in front
            principal = authenticate(state.settings, presented_key(request.headers))
            spend(state.limiter, principal)
        if not principal.allows(scope):
            raise ServiceError(403, "forbidden", f"this key lacks the {scope!r} scope")
        request.state.principal = principal
        return principal

    return dependency


Reader = Annotated[Principal, Depends(require("read"))]
Writer = Annotated[Principal, Depends(require("write"))]
Admin = Annotated[Principal, Depends(require("admin"))]

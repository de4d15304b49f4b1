"""API keys with scopes, and a per-key rate limit.

Keys arrive as ``Authorization: Bearer KEY`` (what the OpenAI client sends) or ``X-API-Key``.
Settings hold only their sha256; a presented key is hashed and compared against every stored
hash with ``hmac.compare_digest``, so timing reveals neither which key nor how much matched.
Scopes nest: admin includes write, write includes read. With ``auth_disabled`` every request
acts as a local admin; ``ragtune serve`` then refuses any non-loopback address.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import threading
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from service.errors import ServiceError
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


def presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return request.headers.get("x-api-key") or None


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
    """A token bucket per key: ``per_minute`` requests, refilled continuously."""

    def __init__(self, per_minute: int) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 if allowed now, else seconds until a request would be."""
        if self.capacity <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate


def require(scope: str):  # noqa: ANN201 - returns a FastAPI dependency
    def dependency(request: Request) -> Principal:
        state = request.app.state.ragtune
        principal = authenticate(state.settings, presented_key(request))
        if not principal.allows(scope):
            raise ServiceError(403, "forbidden", f"this key lacks the {scope!r} scope")
        wait = state.limiter.take(principal.name)
        if wait > 0:
            raise ServiceError(
                429,
                "rate_limited",
                "too many requests for this key",
                {"retry_after": math.ceil(wait)},
            )
        request.state.principal = principal
        return principal

    return dependency


Reader = Annotated[Principal, Depends(require("read"))]
Writer = Annotated[Principal, Depends(require("write"))]
Admin = Annotated[Principal, Depends(require("admin"))]

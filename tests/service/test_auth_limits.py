"""Who may do what (the auth matrix), every request limit, and the metrics endpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.app import create_app
from service.auth import RateLimiter
from service.settings import ApiKey, Limits, Settings
from tests.helpers import app_clients

KEYS = {s: f"key-for-{s}-0123456789" for s in ("read", "write", "admin")}


def _settings(**limits: int) -> Settings:
    keys = [ApiKey(name=s, key=k, scopes=[s]) for s, k in KEYS.items()]  # type: ignore[arg-type]
    return Settings(auth_disabled=False, api_keys=keys, limits=Limits(**limits))


@pytest.fixture
def make_client(tiny_llama: Path, tmp_path: Path):
    with app_clients(tiny_llama, tmp_path) as make_app_client:
        yield lambda **limits: make_app_client(_settings(**limits))


def _h(scope: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[scope]}"} if scope else {}


CALLS = [  # (method, path, json, least scope)
    ("get", "/v1/documents", None, "read"),
    ("post", "/v1/search", {"query": "x"}, "read"),
    ("post", "/v1/documents", {"text": "hello"}, "write"),
    ("put", "/v1/documents/a", {"text": "hello"}, "write"),
    ("get", "/metrics", None, "read"),
]


@pytest.mark.parametrize("method,path,body,least", CALLS)
def test_auth_matrix(make_client, method: str, path: str, body: dict | None, least: str) -> None:
    client = make_client()
    rank = ["read", "write", "admin"]
    assert client.request(method, path, json=body).status_code == 401
    bad = client.request(method, path, json=body, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_key"
    for scope in rank:
        r = client.request(method, path, json=body, headers=_h(scope))
        allowed = rank.index(scope) >= rank.index(least)
        assert (r.status_code < 400) == allowed, (scope, r.status_code, r.text)
        if not allowed:
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"


def test_x_api_key_header_works_and_health_is_public(make_client) -> None:
    client = make_client()
    assert client.get("/v1/documents", headers={"X-API-Key": KEYS["read"]}).status_code == 200
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200


def test_request_limits(make_client) -> None:
    client = make_client(
        max_body_bytes=2000, max_k=5, max_new_tokens=8, max_batch_documents=2, max_question_chars=50
    )
    w = _h("write")
    big = client.post("/v1/documents", json={"text": "x" * 5000}, headers=w)
    assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"
    chunked = client.post(
        "/v1/documents",
        content=(b"x" * 1000 for _ in range(5)),
        headers={**w, "content-type": "application/json"},
    )  # no length given
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "body_too_large"
    batch = {"documents": [{"text": "a"}, {"text": "b"}, {"text": "c"}]}
    assert client.post("/v1/documents", json=batch, headers=w).status_code == 422
    for body, code in [
        ({"question": "q", "k": 6}, "k_too_large"),
        ({"question": "q" * 51}, "question_too_long"),
        ({"question": "q", "max_new_tokens": 9}, "max_new_tokens_too_large"),
    ]:
        r = client.post("/v1/query", json=body, headers=w)
        assert r.status_code == 422 and r.json()["error"]["code"] == code


def test_rate_limit_returns_429_with_retry_after(make_client) -> None:
    client = make_client(rate_limit_per_minute=3)
    codes = [client.get("/v1/documents", headers=_h("read")).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    last = client.get("/v1/documents", headers=_h("read"))
    assert int(last.headers["Retry-After"]) >= 1
    assert client.get("/v1/documents", headers=_h("write")).status_code == 200  # per key


def test_auth_off_has_no_per_key_rate_limit_unless_set(tiny_llama: Path, tmp_path: Path) -> None:
    """A local script searching 121 times in a minute is one user, not an attack."""
    with app_clients(tiny_llama, tmp_path) as make:
        local = make(Settings())
        codes = {local.post("/v1/search", json={"query": "x"}).status_code for _ in range(121)}
        assert codes == {200}
        capped = make(Settings(limits=Limits(rate_limit_per_minute=2)))
        codes = {capped.post("/v1/search", json={"query": "x"}).status_code for _ in range(3)}
        assert codes == {200, 429}


def test_unauthenticated_requests_get_401_before_any_body_error(make_client) -> None:
    client = make_client(max_body_bytes=100)
    json_type = {"content-type": "application/json"}
    for headers in ({}, {"Authorization": "Bearer wrong-key"}):
        bad_json = client.post(
            "/v1/documents", content=b"{not json", headers={**json_type, **headers}
        )
        assert bad_json.status_code == 401, bad_json.text
        too_big = client.post("/v1/documents", content=b"x" * 500, headers={**json_type, **headers})
        assert too_big.status_code == 401, too_big.text
    keyed = client.post("/v1/documents", content=b"{not json", headers={**json_type, **_h("write")})
    assert keyed.status_code == 422  # with a key, the body is checked as before


def test_failed_keys_are_throttled_per_client_address(make_client) -> None:
    client = make_client(failed_auth_per_minute=3)
    wrong = {"Authorization": "Bearer guess-0123456789abcdef"}
    codes = [client.get("/v1/documents", headers=wrong).status_code for _ in range(3)]
    assert codes == [401, 401, 401]
    throttled = client.get("/v1/documents", headers=wrong)
    assert (
        throttled.status_code == 429 and throttled.json()["error"]["code"] == "too_many_failed_keys"
    )
    assert int(throttled.headers["Retry-After"]) >= 1
    # while throttled even the right key is not checked: a guess that hits would look the same
    assert client.get("/v1/documents", headers=_h("read")).status_code == 429
    assert client.get("/v1/documents").status_code == 401  # no key presented: not a guess
    assert client.get("/healthz").status_code == 200
    from fastapi.testclient import TestClient

    other = TestClient(client.app, base_url="http://127.0.0.1", client=("10.1.2.3", 1))
    assert other.get("/v1/documents", headers=_h("read")).status_code == 200  # per address


def test_failed_key_throttle_can_be_turned_off(make_client) -> None:
    client = make_client(failed_auth_per_minute=0)
    wrong = {"Authorization": "Bearer guess-0123456789abcdef"}
    assert {client.get("/v1/documents", headers=wrong).status_code for _ in range(15)} == {401}
    assert client.get("/v1/documents", headers=_h("read")).status_code == 200


def test_rate_limiter_refills() -> None:
    limiter = RateLimiter(per_minute=60)
    for _ in range(60):
        assert limiter.take("k") == 0
    assert 0 < limiter.take("k") <= 1.0


def test_rate_limiter_forgets_refilled_clients() -> None:
    limiter = RateLimiter(per_minute=60, max_tracked=2)
    for address in ("a", "b", "c"):
        assert limiter.take(address) == 0
    assert len(limiter) <= 2
    assert limiter.wait("never-seen") == 0


def test_auth_configuration_is_checked_before_serving() -> None:
    with pytest.raises(ValueError, match="only allowed on loopback"):
        create_app(Settings(auth_disabled=True, host="0.0.0.0"))
    with pytest.raises(ValueError, match="no API keys"):
        create_app(Settings(auth_disabled=False))
    create_app(Settings(auth_disabled=True, host="::1"))


def test_metrics_count_requests(make_client) -> None:
    client = make_client()
    client.post("/v1/search", json={"query": "x"}, headers=_h("read"))
    text = client.get("/metrics", headers=_h("read")).text
    assert 'ragtune_requests_total{method="POST",route="/v1/search",status="200"} 1.0' in text
    assert "ragtune_index_documents 0.0" in text

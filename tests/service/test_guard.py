"""No web page can drive a local server: Host and Origin checks, the bound-socket rule, CORS."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app import create_app
from service.guard import same_origin, split_host
from service.settings import ApiKey, Settings
from tests.helpers import app_clients, serve_on, tiny_loader

KEY = "guard-test-key-0123456789"
FOREIGN = "http://evil.example"
UPLOAD = [
    ("files", ("x.jsonl", b'{"id": "doc", "text": "replaced by a web page"}\n', "text/plain"))
]


@pytest.fixture
def make_client(tiny_llama: Path, tmp_path: Path):
    with app_clients(tiny_llama, tmp_path) as make:
        yield make


def _auth_on(**extra: object) -> Settings:
    keys = [ApiKey(name="admin", key=KEY, scopes=["admin"])]  # type: ignore[arg-type,list-item]
    return Settings(auth_disabled=False, api_keys=keys, **extra)  # type: ignore[arg-type]


def test_a_foreign_page_cannot_upload_and_the_stored_document_is_unchanged(make_client) -> None:
    client = make_client(Settings())
    assert client.post("/v1/documents", json={"id": "doc", "text": "original"}).status_code == 201
    for headers in ({"Origin": FOREIGN}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}):
        r = client.post("/v1/documents/upload", files=UPLOAD, headers=headers)
        assert r.status_code == 403, (headers, r.text)
        assert r.json()["error"]["code"] == "origin_not_allowed"
        assert "Origin" in r.json()["error"]["message"]
    assert client.get("/v1/documents/doc").json()["text"] == "original"
    assert client.delete("/v1/documents/doc", headers={"Origin": FOREIGN}).status_code == 403
    assert client.get("/v1/documents/doc").status_code == 200


def test_same_origin_and_scripts_without_origin_still_write(make_client) -> None:
    client = make_client(Settings())
    own = {"Origin": "http://127.0.0.1", "Sec-Fetch-Site": "same-origin"}
    assert client.post("/v1/documents/upload", files=UPLOAD, headers=own).status_code == 201
    assert client.post("/v1/documents", json={"text": "a script"}).status_code == 201
    # a foreign page may still read nothing it could not already: GET is not state-changing
    assert client.get("/v1/documents", headers={"Origin": FOREIGN}).status_code == 200


@pytest.mark.parametrize(
    "host", ["rebind.attacker.example", "rebind.attacker.example:8000", "10.0.0.5", "[fe80::1]"]
)
def test_dns_rebinding_host_is_refused_with_auth_off(make_client, host: str) -> None:
    client = make_client(Settings())
    r = client.get("/v1/documents", headers={"Host": host})
    assert r.status_code == 403 and r.json()["error"]["code"] == "host_not_allowed"
    assert "loopback" in r.json()["error"]["message"]
    assert client.get("/healthz", headers={"Host": host}).status_code == 403


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.5:1", "[::1]:9000"])
def test_loopback_hosts_are_served_with_auth_off(make_client, host: str) -> None:
    client = make_client(Settings())
    assert client.get("/v1/documents", headers={"Host": host}).status_code == 200


def test_auth_on_serves_any_host(make_client) -> None:
    client = make_client(_auth_on())
    r = client.get("/v1/documents", headers={"Host": "ragtune.internal", "X-API-Key": KEY})
    assert r.status_code == 200


def test_a_request_on_a_non_loopback_socket_is_refused_with_auth_off(tiny_llama: Path) -> None:
    """The ASGI scope's ``server`` is the local address the connection came in on."""
    app = create_app(Settings())
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/healthz",
        "raw_path": b"/healthz",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8000")],
        "server": ("192.168.1.20", 8000),
        "client": ("192.168.1.30", 50000),
        "scheme": "http",
        "http_version": "1.1",
        "root_path": "",
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 403
    assert b"loopback" in sent[1]["body"]


def _non_loopback_address() -> str | None:
    """This machine's address on its default route, if it has one that is not loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent for UDP connect
            address = str(s.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


@pytest.mark.slow
def test_uvicorn_on_all_addresses_with_auth_off_answers_only_on_loopback(
    tiny_llama: Path, tmp_path: Path
) -> None:
    """``uvicorn --host 0.0.0.0`` with auth off: settings.host still says 127.0.0.1."""
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to connect on")
    app = create_app(Settings(), loader=tiny_loader(tiny_llama, tmp_path))
    base, server = serve_on(app, "0.0.0.0")
    try:
        port = base.rsplit(":", 1)[1]
        assert httpx.get(f"{base}/v1/documents", timeout=10).status_code == 200
        outside = httpx.get(
            f"http://{address}:{port}/v1/documents",
            headers={"Host": f"127.0.0.1:{port}"},  # a Host that passes: only the socket refuses
            timeout=10,
        )
        assert outside.status_code == 403 and "loopback" in outside.json()["error"]["message"]
    finally:
        server.should_exit = True  # type: ignore[attr-defined]


def test_auth_on_refuses_origins_not_allowed_and_serves_allowed_ones(make_client) -> None:
    app_origin = "https://ui.example"
    client = make_client(_auth_on(allowed_origins=[app_origin]))
    key = {"Authorization": f"Bearer {KEY}"}
    refused = client.post("/v1/documents", json={"text": "x"}, headers={**key, "Origin": FOREIGN})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "origin_not_allowed"
    allowed = client.post(
        "/v1/documents",
        json={"text": "x"},
        headers={**key, "Origin": app_origin, "Sec-Fetch-Site": "cross-site"},
    )
    assert allowed.status_code == 201
    assert allowed.headers["access-control-allow-origin"] == app_origin


def test_preflight_is_answered_only_for_allowed_origins(make_client) -> None:
    app_origin = "https://ui.example"
    client = make_client(_auth_on(allowed_origins=[app_origin]))
    ask = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    ok = client.options("/v1/documents", headers={**ask, "Origin": app_origin})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == app_origin
    assert "authorization" in ok.headers["access-control-allow-headers"].lower()
    other = client.options("/v1/documents", headers={**ask, "Origin": FOREIGN})
    assert other.status_code >= 400 and "access-control-allow-origin" not in other.headers


def test_auth_on_without_allowed_origins_refuses_every_browser_write(make_client) -> None:
    client = make_client(_auth_on())
    key = {"Authorization": f"Bearer {KEY}"}
    r = client.post("/v1/documents", json={"text": "x"}, headers={**key, "Origin": FOREIGN})
    assert r.status_code == 403
    preflight = client.options(
        "/v1/documents", headers={"Origin": FOREIGN, "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers


@pytest.mark.parametrize(
    "value,expected",
    [
        ("localhost", ("localhost", None)),
        ("LocalHost:8000", ("localhost", 8000)),
        ("[::1]:9", ("::1", 9)),
        ("[::1]", ("::1", None)),
        ("127.0.0.1:", None),
        ("a:b", None),
        ("[::1", None),
    ],
)
def test_split_host(value: str, expected: tuple[str, int | None] | None) -> None:
    assert split_host(value) == expected


@pytest.mark.parametrize(
    "origin,host,scheme,same",
    [
        ("http://127.0.0.1:8000", "127.0.0.1:8000", "http", True),
        ("http://127.0.0.1", "127.0.0.1:80", "http", True),
        ("https://localhost", "localhost:443", "https", True),
        ("http://127.0.0.1:8001", "127.0.0.1:8000", "http", False),
        ("https://127.0.0.1:8000", "127.0.0.1:8000", "http", False),
        ("http://localhost:8000", "127.0.0.1:8000", "http", False),
        ("null", "127.0.0.1:8000", "http", False),
        ("http://127.0.0.1:8000/path", "127.0.0.1:8000", "http", False),
    ],
)
def test_same_origin(origin: str, host: str, scheme: str, same: bool) -> None:
    assert same_origin(origin, host, scheme) is same

"""What a hostile probe of a real server found after the first hardening pass, each kept fixed:
a stored lone surrogate, a crash that dropped the client's keep-alive connection, a tiny
temperature, an unbounded error list, an unparsable number, the per-key rate limit after the
body, ``X-Forwarded-For`` picking the client's address, and origins read two ways."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from service.app import create_app
from service.responses import MAX_DETAILS
from service.settings import ApiKey, Limits, Settings
from tests.helpers import app_clients, plant_row, serve_on_loopback, tiny_loader

KEY = "probe-key-0123456789"


def _keyed(**limits: Any) -> Settings:
    key = ApiKey(name="probe", key=KEY, scopes=["admin"])  # type: ignore[arg-type]
    return Settings(auth_disabled=False, api_keys=[key], limits=Limits(**limits))


def test_a_stored_lone_surrogate_is_served_by_every_read(tiny_llama: Path, tmp_path: Path) -> None:
    with app_clients(tiny_llama, tmp_path) as make:
        client = make(Settings())
        assert client.post("/v1/documents", json={"id": "s", "text": "apt packages"}).status_code
        plant_row(tmp_path / "index", "s", '{"x": "a\\ud800b"}')  # as an older server wrote it
        one = client.get("/v1/documents/s")
        page = client.get("/v1/documents")
        found = client.post("/v1/search", json={"query": "apt packages", "k": 3})
    assert one.status_code == 200 and one.json()["metadata"] == {"x": "a\ufffdb"}
    assert page.status_code == 200 and page.json()["documents"][0]["metadata"]["x"] == "a\ufffdb"
    assert found.status_code == 200 and found.json()["results"][0]["metadata"]["x"] == "a\ufffdb"


def test_a_crash_is_a_500_that_keeps_the_clients_connection(
    tiny_llama: Path, tmp_path: Path
) -> None:
    """Starlette's outermost handler sent the 500 and raised again, and uvicorn then dropped
    the keep-alive connection: the client's next request failed with 'Server disconnected'."""
    app = create_app(Settings(auth_disabled=True), loader=tiny_loader(tiny_llama, tmp_path))
    base, server = serve_on_loopback(app)
    try:
        retriever = app.state.ragtune.retriever

        def boom(*_: object, **__: object) -> None:
            raise RuntimeError("secret internal detail /etc/passwd")

        retriever.search, original = boom, retriever.search
        with httpx.Client(base_url=base, timeout=30) as client:
            crashed = client.post("/v1/search", json={"query": "x"})
            retriever.search = original
            after = client.get("/healthz")  # the same connection
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
    assert crashed.status_code == 500 and "secret" not in crashed.text
    assert crashed.json()["error"]["code"] == "internal_error"
    assert after.status_code == 200


def test_a_tiny_temperature_samples_as_greedy(tiny_llama: Path, tmp_path: Path) -> None:
    with app_clients(tiny_llama, tmp_path) as make:
        client = make(Settings())
        model = client.get("/v1/models").json()["data"][0]["id"]
        body = {"model": model, "retrieval": False, "max_tokens": 6}
        body["messages"] = [{"role": "user", "content": "hi"}]
        greedy = client.post("/v1/chat/completions", json={**body, "temperature": 0})
        tiny = [
            client.post("/v1/chat/completions", json={**body, "temperature": t})
            for t in (1e-40, 1e-300, 5e-324)
        ]
    assert all(r.status_code == 200 for r in tiny), [r.text for r in tiny]
    text = greedy.json()["choices"][0]["message"]["content"]
    assert {r.json()["choices"][0]["message"]["content"] for r in tiny} == {text}


def test_a_422_lists_at_most_a_few_errors_and_counts_the_rest(
    tiny_llama: Path, tmp_path: Path
) -> None:
    with app_clients(tiny_llama, tmp_path) as make:
        client = make(Settings())
        body = {"query": "x", **{f"k{i}": 1 for i in range(500)}}
        r = client.post("/v1/search", json=body)
    assert r.status_code == 422
    details = r.json()["error"]["details"]
    assert (
        len(details) == MAX_DETAILS + 1
        and details[-1]["msg"] == f"and {500 - MAX_DETAILS} more errors"
    )
    assert len(r.content) < 10_000


def test_a_number_too_long_to_parse_is_a_422_naming_the_body(
    tiny_llama: Path, tmp_path: Path
) -> None:
    with app_clients(tiny_llama, tmp_path) as make:
        client = make(Settings())
        raw = '{"query": "x", "k": ' + "1" * 4301 + "}"
        r = client.post("/v1/search", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["loc"] == ["body"]


def test_the_per_key_rate_limit_comes_before_the_body(tiny_llama: Path, tmp_path: Path) -> None:
    with app_clients(tiny_llama, tmp_path) as make:
        client = make(_keyed(rate_limit_per_minute=2))
        auth = {"Authorization": f"Bearer {KEY}", "content-type": "application/json"}
        spent = [client.post("/v1/search", json={"query": "x"}, headers=auth) for _ in range(2)]
        broken = client.post("/v1/search", content="{bad", headers=auth)
        huge = client.post(
            "/v1/search", content=json.dumps({"query": "x", "k": 10**9}), headers=auth
        )
    assert [r.status_code for r in spent] == [200, 200]
    assert broken.status_code == 429 and broken.headers["Retry-After"]
    assert huge.status_code == 429


def test_ragtune_serve_trusts_forwarded_headers_only_from_the_proxies_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import uvicorn

    from service.cli import main

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append(kwargs))
    monkeypatch.setenv("RAGTUNE_AUTH_DISABLED", "1")
    assert CliRunner().invoke(main, ["serve"]).exit_code == 0
    monkeypatch.setenv("RAGTUNE_TRUSTED_PROXIES", '["10.0.0.5"]')
    assert CliRunner().invoke(main, ["serve"]).exit_code == 0
    assert calls[0]["proxy_headers"] is False
    assert calls[1]["proxy_headers"] is True and calls[1]["forwarded_allow_ips"] == ["10.0.0.5"]


def test_allowed_origins_are_read_one_way() -> None:
    settings = Settings(allowed_origins=["https://UI.example/", " http://127.0.0.1:3000 "])
    assert settings.allowed_origins == ["https://ui.example", "http://127.0.0.1:3000"]
    for bad in ("ui.example", "https://ui.example/app", "ftp://ui.example"):
        with pytest.raises(ValueError, match="allowed_origins"):
            Settings(allowed_origins=[bad])


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/search", {"query": "x", "k": True}, "k"),
        ("/v1/search", {"query": "x", "k": "3"}, "k"),
        ("/v1/search", {"query": "x", "k": 3.5}, "k"),
        ("/v1/query", {"question": "x", "stream": "yes"}, "stream"),
        ("/v1/query", {"question": "x", "max_new_tokens": True}, "max_new_tokens"),
        ("/v1/documents", {"text": "x", "id": 7}, "id"),
        ("/v1/tune/jobs", {"dataset": "f", "hyperparameters": {"rank": True}}, "rank"),
    ],
)
def test_json_types_are_taken_as_sent(
    tiny_llama: Path, tmp_path: Path, path: str, body: dict[str, Any], field: str
) -> None:
    """A boolean or a string is not a number, a string not a boolean: pydantic's lax mode took
    ``"k": true`` as 1 and ``"stream": "yes"`` as true."""
    with app_clients(tiny_llama, tmp_path) as make:
        r = make(Settings()).post(path, json=body)
    assert r.status_code == 422, r.text
    assert field in [str(x) for d in r.json()["error"]["details"] for x in d["loc"]]


def test_chat_types_are_taken_as_sent_and_its_unknown_fields_still_ignored(
    tiny_llama: Path, tmp_path: Path
) -> None:
    with app_clients(tiny_llama, tmp_path) as make:
        client = make(Settings())
        model = client.get("/v1/models").json()["data"][0]["id"]
        body = {"model": model, "retrieval": False, "max_tokens": 2, "user": "u1", "top_p": 1}
        body["messages"] = [{"role": "user", "content": "hi", "name": "x"}]
        fine = client.post("/v1/chat/completions", json={**body, "temperature": 1})
        lax = client.post("/v1/chat/completions", json={**body, "temperature": "0.5"})
        seeded = client.post("/v1/chat/completions", json={**body, "seed": True})
    assert fine.status_code == 200, fine.text  # an integer is a fine float
    assert lax.status_code == 422 and seeded.status_code == 422


def test_a_configured_limit_names_its_field_as_a_validation_error_does(
    tiny_llama: Path, tmp_path: Path
) -> None:
    limits = Limits(max_question_chars=10, max_k=3, rate_limit_per_minute=0)
    with app_clients(tiny_llama, tmp_path) as make:
        client = make(Settings(auth_disabled=True, limits=limits))
        model = client.get("/v1/models").json()["data"][0]["id"]
        long = "x" * 11
        query = client.post("/v1/query", json={"question": long, "mode": "base", "k": 1})
        search = client.post("/v1/search", json={"query": long, "k": 1})
        many = client.post("/v1/search", json={"query": "x", "k": 4})
        msgs = [{"role": "user", "content": "ok"}, {"role": "user", "content": long}]
        chat = client.post(
            "/v1/chat/completions", json={"model": model, "messages": msgs, "retrieval": {"k": 1}}
        )
        k = client.post(
            "/v1/chat/completions",
            json={"model": model, "messages": msgs[:1], "retrieval": {"k": 4}},
        )
    for r, loc in [
        (query, ["body", "question"]),
        (search, ["body", "query"]),
        (many, ["body", "k"]),
        (chat, ["body", "messages", 1, "content"]),
        (k, ["body", "retrieval", "k"]),
    ]:
        assert r.status_code == 422 and r.json()["error"]["details"]["loc"] == loc, r.text


def test_an_upload_giving_one_id_twice_keeps_the_first_and_names_where_the_second_is(
    tiny_llama: Path, tmp_path: Path
) -> None:
    """It rejected the whole upload with 'documents[1].id appears twice', naming neither the
    file nor the line."""
    twice = '{"id": "z1", "text": "first"}\n{"id": "z1", "text": "again"}\n'
    other = '{"id": "z1", "text": "from another file"}\n{"id": "z2", "text": "new"}\n'
    files = [
        ("files", ("a.jsonl", twice.encode(), "application/octet-stream")),
        ("files", ("b.jsonl", other.encode(), "application/octet-stream")),
        ("files", ("same.txt", b"one", "text/plain")),
        ("files", ("dir/same.txt", b"two", "text/plain")),
    ]
    with app_clients(tiny_llama, tmp_path) as make:
        client = make(Settings())
        r = client.post("/v1/documents/upload", files=files)
        kept = client.get("/v1/documents/z1").json()["text"]
    assert r.status_code == 201, r.text
    assert sorted(d["id"] for d in r.json()["documents"]) == ["same.txt", "z1", "z2"]
    assert kept == "first"
    failed = {f["source"]: f["reason"] for f in r.json()["failed"]}
    assert failed == {
        "a.jsonl:2 (z1)": "id 'z1' already given on line 1",
        "b.jsonl:1 (z1)": "id 'z1' already given by a.jsonl:1 (z1)",
        "same.txt": "id 'same.txt' already given by same.txt",
    }


def test_refusals_before_the_routes_are_counted_in_the_metrics(
    tiny_llama: Path, tmp_path: Path
) -> None:
    with app_clients(tiny_llama, tmp_path) as make:
        client = make(_keyed())
        assert client.get("/v1/documents").status_code == 401
        metrics = client.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert any('status="401"' in line for line in metrics.splitlines())


def test_an_answer_length_over_the_limit_names_the_field_it_came_in(
    tiny_llama: Path, tmp_path: Path
) -> None:
    with app_clients(tiny_llama, tmp_path) as make:
        client = make(Settings(limits=Limits(max_new_tokens=8)))
        model = client.get("/v1/models").json()["data"][0]["id"]
        body = {"model": model, "retrieval": False, "messages": [{"role": "user", "content": "x"}]}
        new = client.post("/v1/chat/completions", json={**body, "max_completion_tokens": 9})
        old = client.post("/v1/chat/completions", json={**body, "max_tokens": 9})
    assert new.json()["error"]["details"]["loc"] == ["body", "max_completion_tokens"]
    assert old.json()["error"]["details"]["loc"] == ["body", "max_tokens"]

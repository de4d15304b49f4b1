"""The app loads models in its lifespan, reports readiness, and fails loudly when it cannot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from retriever.sources import ModelNotAvailable
from service.app import AppState, create_app
from service.settings import ApiKey, Settings
from tests.fakes import FakeEmbedder
from tuner.models import load_generator

BASE = "http://127.0.0.1"


def test_ready_only_after_the_lifespan_loaded_models(tiny_llama: Path) -> None:
    def loader(state: AppState) -> None:
        state.loaded["generator"] = {"name": "tiny"}

    app = create_app(Settings(), loader=loader)
    client = TestClient(app, base_url=BASE)
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 503  # lifespan not run: nothing loaded
    with TestClient(app, base_url=BASE) as live:
        body = live.get("/readyz")
        assert body.status_code == 200 and body.json()["models"] == {"generator": {"name": "tiny"}}


def test_startup_fails_when_a_model_is_unavailable() -> None:
    def loader(state: AppState) -> None:
        raise ModelNotAvailable("generator", "ghost")

    with (
        pytest.raises(ModelNotAvailable),
        TestClient(create_app(Settings(), loader=loader), base_url=BASE),
    ):
        pass


def test_readyz_names_models_without_any_server_path(tiny_llama: Path, tmp_path: Path) -> None:
    def loader(state: AppState) -> None:  # what load_models records, with real identities
        state.loaded["embedder"] = FakeEmbedder().identity
        generator = load_generator(str(tiny_llama), cache_dir=tmp_path / "m")
        state.loaded["generator"] = generator.identity

    with TestClient(create_app(Settings(), loader=loader), base_url=BASE) as client:
        r = client.get("/readyz")
    assert r.status_code == 200
    models = r.json()["models"]
    assert (
        models["generator"]["name"] == tiny_llama.name and "weights_dir" not in models["generator"]
    )
    assert str(tmp_path) not in r.text and str(tiny_llama.parent) not in r.text
    assert "/" not in models["generator"]["name"]


def test_interactive_docs_are_off_unless_asked_for() -> None:
    keys = [ApiKey(name="r", key="docs-test-key-0123456789", scopes=["read"])]  # type: ignore[arg-type,list-item]
    client = TestClient(create_app(Settings(auth_disabled=False, api_keys=keys)), base_url=BASE)
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    schema = client.get("/openapi.json")  # public: the same for every install, no data in it
    assert schema.status_code == 200 and "/v1/query" in schema.json()["paths"]
    on = TestClient(create_app(Settings(api_docs=True)), base_url=BASE)
    assert on.get("/docs").status_code == 200 and "swagger" in on.get("/docs").text.lower()


def test_models_and_index_name_models_by_id_never_by_folder(
    tiny_llama: Path, tmp_path: Path
) -> None:
    """A generator and an embedder configured by folder are named by the folder's last part in
    GET /v1/models, GET /v1/index and chat replies; chat takes that id or the configured value."""
    from retriever.index import Retriever
    from service.generation.engine import GenerationEngine

    models = tmp_path / "models"

    def loader(state) -> None:  # noqa: ANN001 - service.app.AppState
        state.embedder = FakeEmbedder(name=str(models / "e5-small"))
        state.generator = load_generator(str(tiny_llama), cache_dir=tmp_path / "m")
        state.engine = GenerationEngine(state.generator, metrics=state.metrics)
        state.retriever = Retriever(tmp_path / "index", state.embedder)
        previous = {"name": str(models / "old-embedder"), "hub_id": None, "dim": 64}
        state.retriever.store.set_meta("previous_embedder", json.dumps(previous))

    settings = Settings(generator=str(tiny_llama), auth_disabled=True)
    with TestClient(create_app(settings, loader=loader), base_url=BASE) as client:
        listed = client.get("/v1/models")
        index = client.get("/v1/index")
        chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        chat |= {"retrieval": False}
        replies = [
            client.post("/v1/chat/completions", json={**chat, "model": model})
            for model in (tiny_llama.name, str(tiny_llama))
        ]
        (models / "e5-new").mkdir(parents=True)  # no weights: the re-embedding fails
        started = client.post("/v1/index/reindex", json={"embedder": str(models / "e5-new")})
        assert started.status_code == 202, started.text
        state = client.app.state.ragtune  # type: ignore[attr-defined]
        assert state.reindexer.join(timeout=30).state == "failed"
        reindex = [client.get("/v1/index"), client.get("/v1/index/reindex")]
    assert listed.status_code == 200 and [m["id"] for m in listed.json()["data"]] == [
        tiny_llama.name
    ]
    assert index.status_code == 200, index.text
    assert index.json()["embedder"]["name"] == "e5-small"
    assert index.json()["previous_embedder"]["name"] == "old-embedder"
    assert [r.json().get("reindex", r.json())["target"] for r in reindex] == [
        {"embedder": "e5-new"}
    ] * 2
    for r in (listed, index, *replies, *reindex):
        assert str(tmp_path) not in r.text and str(tiny_llama.parent) not in r.text, r.text
    for r in replies:
        assert r.status_code == 200 and r.json()["model"] == tiny_llama.name, r.text


@pytest.mark.parametrize("enabled", [True, False])
def test_an_index_embedded_without_context_is_re_embedded_at_startup(
    tiny_llama: Path, tmp_path: Path, enabled: bool
) -> None:
    """An index from before chunks carried their title and section is re-embedded with them in
    the background as the app starts (unless reembed_old_index is off), and says so meanwhile."""
    from retriever.index import DocumentIn, Retriever
    from tests.retriever.test_context import GUIDE, Recording, _make_old

    folder = tmp_path / "index"
    embedder = Recording()
    old = Retriever(folder, embedder)
    old.upsert(DocumentIn(GUIDE, "guide.md", {"title": "Guide"}))
    old.close()
    _make_old(folder, embedder)
    embedder.seen.clear()

    def loader(state: AppState) -> None:
        state.embedder = embedder
        state.generator = load_generator(str(tiny_llama), cache_dir=tmp_path / "m")
        state.retriever = Retriever(folder, embedder)

    settings = Settings(generator=str(tiny_llama), auth_disabled=True)
    settings.retrieval.reembed_old_index = enabled
    with TestClient(create_app(settings, loader=loader), base_url=BASE) as client:
        state = client.app.state.ragtune  # type: ignore[attr-defined]
        status = state.reindexer.join(timeout=30)
        ready, index = client.get("/readyz").json(), client.get("/v1/index").json()
        if not enabled:  # asked for over the API instead (the console's "embedder in use")
            both = client.post("/v1/index/reindex", json={"refresh": True, "rollback": True})
            assert both.status_code == 422 and "exactly one" in both.text, both.text
            asked = client.post("/v1/index/reindex", json={"refresh": True})
            assert asked.status_code == 202 and asked.json()["target"] == {"refresh": True}
            refreshed = state.reindexer.join(timeout=30)
            assert refreshed.state == "succeeded" and refreshed.result["switched"], refreshed
            assert not client.get("/v1/index").json()["needs_reembedding"]
    if enabled:
        assert status.state == "succeeded" and status.reason.startswith("startup"), status
        assert status.result["switched"] and status.target == {"refresh": True}
        assert not ready["needs_reembedding"] and not index["needs_reembedding"]
        assert any(t.startswith("Guide — ") for t in embedder.seen)  # now with the context
    else:
        assert status.state == "idle"
        assert ready["needs_reembedding"] and index["needs_reembedding"]

"""The app loads models in its lifespan, reports readiness, and fails loudly when it cannot."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from retriever.sources import ModelNotAvailable
from service.app import AppState, create_app
from service.settings import Settings


def test_ready_only_after_the_lifespan_loaded_models(tiny_llama: Path) -> None:
    def loader(state: AppState) -> None:
        state.loaded["generator"] = {"name": "tiny"}

    app = create_app(Settings(), loader=loader)
    client = TestClient(app)
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 503  # lifespan not run: nothing loaded
    with TestClient(app) as live:
        body = live.get("/readyz")
        assert body.status_code == 200 and body.json()["models"] == {"generator": {"name": "tiny"}}


def test_startup_fails_when_a_model_is_unavailable() -> None:
    def loader(state: AppState) -> None:
        raise ModelNotAvailable("generator", "ghost")

    with pytest.raises(ModelNotAvailable), TestClient(create_app(Settings(), loader=loader)):
        pass

"""Shared fixtures: no hub, a private data dir and fresh settings for every test; the tiny
models built once per session. Builders live in tests/helpers.py; a conftest never imports a
test module."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import backends
from tests.backends import BACKENDS, IndexPlace
from tests.helpers import build_tiny_llama, make_lora, tiny_st_model


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RAGTUNE_AUTH_DISABLED", "1")  # auth tests turn it back on with keys
    monkeypatch.setenv("RAGTUNE_DATA_DIR", str(tmp_path / "data"))
    for var in (
        "RAGTUNE_CONFIG",
        "RAGTUNE_EMBEDDER",
        "RAGTUNE_GENERATOR",
        "RAGTUNE_EMBEDDER_PATH",
        "RAGTUNE_GENERATOR_PATH",
        "RAGTUNE_MODELS_DIR",
        "RAGTUNE_API_KEYS",
    ):
        monkeypatch.delenv(var, raising=False)
    from service.settings import get_settings

    get_settings.cache_clear()


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a tiny random Llama and its tokenizer, built once per session."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_st(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny sentence-transformers folder (random BERT, mean pooling), built once."""
    tmp = tmp_path_factory.mktemp("tiny-st")
    tiny_st_model(tmp / "bert").save(str(tmp / "st"))
    return tmp / "st"


@pytest.fixture(scope="session")
def tiny_lora(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random (non-zero) LoRA for the tiny Llama, built once."""
    return make_lora(tiny_llama, tmp_path_factory.mktemp("lora") / "lora", seed=3)


@pytest.fixture(params=BACKENDS)
def place(request: pytest.FixtureRequest, tmp_path: Path) -> IndexPlace:
    """An index location in each backend (the test runs once per backend)."""
    return IndexPlace(str(request.param), tmp_path / "idx")


@pytest.fixture
def pg_url() -> str:
    """This test process's real PostgreSQL (pgvector included), started at first use."""
    return backends.pg_url()

"""Fixtures the engine tests share: the tiny Llama loaded once per module and an engine over
it (the prompts they batch are ``tests.helpers.PROMPTS``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.generation.engine import GenerationEngine
from tuner.models import load_generator


@pytest.fixture(scope="module")
def gen(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory):
    return load_generator(str(tiny_llama), cache_dir=tmp_path_factory.mktemp("m"))


@pytest.fixture
def engine(gen):
    e = GenerationEngine(gen, max_batch=8)
    yield e
    e.close()

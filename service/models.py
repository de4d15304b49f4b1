"""Load the service's models from settings: the embedder and the generator.

A thin mapping from ``Settings`` onto ``retriever.embedder`` and ``tuner.models``; the service's
lifespan and the CLI share it so both find weights the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retriever.config import RetrieverConfig
from retriever.embedder import Embedder, load_embedder
from retriever.engine import Retriever, stored_identity
from service.settings import Settings
from tuner.models import Generator, load_generator, pick_device


def embedder_from_settings(settings: Settings) -> Embedder:
    return load_embedder(
        settings.embedder,
        device=pick_device(settings.device),
        local_path=settings.embedder_path,
        offline=settings.offline,
    )


def generator_from_settings(settings: Settings) -> Generator:
    return load_generator(
        settings.generator,
        cache_dir=settings.model_cache,
        device=settings.device,
        local_path=settings.generator_path,
        offline=settings.offline,
    )


def retriever_config(settings: Settings) -> RetrieverConfig:
    return RetrieverConfig(**settings.retrieval.model_dump(exclude={"reranker"}))


def reranker_from_settings(settings: Settings) -> Any:
    """The configured cross-encoder reranker, or None."""
    if not settings.retrieval.reranker:
        return None
    from retriever.rerank import CrossEncoderReranker

    return CrossEncoderReranker(settings.retrieval.reranker, device=pick_device(settings.device))


def open_retriever(settings: Settings, embedder: Embedder | None = None) -> Retriever:
    """The index under the data dir, opened with the configured embedder."""
    embedder = embedder or embedder_from_settings(settings)
    return Retriever(settings.index_dir, embedder, retriever_config(settings))


def index_embedder_name(folder: Path) -> str | None:
    """The embedder (preset, hub id or folder) an existing index was built with."""
    identity = stored_identity(folder)
    return str(identity["name"]) if identity else None

"""Load the service's models from settings: the embedder and the generator.

A thin mapping from ``Settings`` onto ``retriever.embedder`` and ``tuner.models``; the service's
lifespan and the CLI share it so both find weights the same way. An index re-embedded with a
fine-tuned embedder records its registry id; ``index_embedder`` loads that one back.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from retriever.config import RetrieverConfig
from retriever.embedder import Embedder, load_embedder
from retriever.index import Retriever, stored_identity
from service.settings import Settings
from tuner.models import Generator, load_generator, pick_device
from tuner.pg import Database
from tuner.pgregistry import open_registry
from tuner.registry import Registry


def embedder_from_settings(settings: Settings) -> Embedder:
    return load_embedder(
        settings.embedder,
        device=pick_device(settings.device),
        local_path=settings.embedder_path,
        offline=settings.offline,
        backend=settings.retrieval.embedding_backend,
        cache_dir=settings.model_cache,
    )


def generator_from_settings(settings: Settings) -> Generator:
    return load_generator(
        settings.generator,
        cache_dir=settings.model_cache,
        device=settings.device,
        local_path=settings.generator_path,
        offline=settings.offline,
    )


# retrieval settings the service acts on itself, not the index
SERVICE_RETRIEVAL = {
    "reranker",
    "embedding_backend",
    "fit_fusion",
    "reembed_old_index",
    "vector_modules",
}


def retriever_config(settings: Settings) -> RetrieverConfig:
    return RetrieverConfig(**settings.retrieval.model_dump(exclude=SERVICE_RETRIEVAL))


def reranker_from_settings(settings: Settings) -> Any:
    """The configured cross-encoder reranker, or None."""
    if not settings.retrieval.reranker:
        return None
    from retriever.rerank import CrossEncoderReranker

    return CrossEncoderReranker(settings.retrieval.reranker, device=pick_device(settings.device))


def shared_state(settings: Settings) -> Database | None:
    """The database replicas share the job queue and the registry's records in
    (``database.url``), or None: they live under the data dir."""
    db = settings.database
    return Database(db.url, db.schema_name) if db.url else None


def export_database(settings: Settings) -> None:
    """Name the configured database in this process's environment, where the tuner's code run
    in it (``ragtune tune``'s trainers) and the processes it starts look for it."""
    database = shared_state(settings)
    if database is not None:
        os.environ.update(database.env())


def registry_from_settings(settings: Settings) -> Registry:
    """The adapter registry: records in the database when ``database.url`` is set."""
    return open_registry(settings.layout.adapters, shared_state(settings))


def open_retriever(settings: Settings, embedder: Embedder | None = None) -> Retriever:
    """The index, opened with the configured embedder (or the fine-tuned version of it the
    index was switched to): in PostgreSQL when ``database.url`` is set, else under the data
    dir."""
    db = settings.database
    if db.url:
        from retriever.postgres import PgRetriever

        return PgRetriever(
            db.url,
            embedder or embedder_from_settings(settings),
            retriever_config(settings),
            schema=db.schema_name,
            pool_size=db.pool_size,
            exact=db.exact_search,
            ef_search=db.ef_search,
            embedder_for=lambda identity: embedder_for(identity, settings),
        )
    embedder = embedder or index_embedder(settings)
    return Retriever(settings.index_dir, embedder, retriever_config(settings))


def tuned_embedder(adapter_id: str, settings: Settings) -> Embedder:
    """A fine-tuned embedder from the adapter registry (``RecordNotFound``, ``RegistryError``)."""
    from retriever.embedder import load_tuned_embedder

    record, folder = embedder_record(adapter_id, settings)
    return load_tuned_embedder(
        folder,
        adapter_id,
        method=record.method,
        base=record.base_model,
        device=pick_device(settings.device),
        base_path=settings.embedder_path if record.base_model == settings.embedder else None,
        offline=settings.offline,
    )


def embedder_record(adapter_id: str, settings: Settings) -> tuple[Any, Path]:
    """The registry record and folder of a fine-tuned embedder (``RecordNotFound``, or
    ``RegistryError`` when the id names a generator adapter)."""
    from tuner.registry import RegistryError

    registry = registry_from_settings(settings)
    record = registry.get(adapter_id)
    if record.component != "retriever":
        raise RegistryError(f"{adapter_id} is a {record.component} adapter, not an embedder")
    return record, registry.folder(adapter_id)


def embedder_for(identity: dict[str, Any], settings: Settings) -> Embedder:
    """The embedder an index identity names: a fine-tuned one from the registry, or a preset,
    hub id or folder (the configured local copy when it is the configured embedder). A stored
    identity names its backend (none: torch); a bare ``{"name": ...}`` takes the configured one,
    so ``ragtune reindex`` re-embeds an index into the configured backend."""
    if identity.get("adapter"):
        return tuned_embedder(str(identity["adapter"]), settings)
    name = str(identity["name"])
    stored = "weights" in identity
    return load_embedder(
        name,
        device=pick_device(settings.device),
        local_path=settings.embedder_path if name == settings.embedder else None,
        offline=settings.offline,
        backend=str(
            identity.get("backend", "torch" if stored else settings.retrieval.embedding_backend)
        ),
        cache_dir=settings.model_cache,
    )


def index_embedder(settings: Settings) -> Embedder:
    """The configured embedder, or, when the index was re-embedded with a fine-tuned version of
    it, that version (so a restart serves what the last switch chose)."""
    identity = tuned_index_identity(settings)
    return embedder_for(identity, settings) if identity else embedder_from_settings(settings)


def tuned_index_identity(settings: Settings) -> dict[str, Any] | None:
    """The index's stored embedder identity when it is a fine-tuned version (``adapter``) of
    the configured embedder; else None."""
    identity = stored_identity(settings.index_dir)
    if identity and identity.get("adapter") and identity.get("name") == settings.embedder:
        return identity
    return None


def embedders_in_use(settings: Settings) -> dict[str, str]:
    """Registry ids of the embedders the index uses now or would roll back to."""
    found = {}
    for key, role in (("previous_embedder", "rollback target"), ("embedder", "embedder")):
        identity = stored_identity(settings.index_dir, key)
        if identity and identity.get("adapter"):
            found[str(identity["adapter"])] = role
    return found


def index_embedder_name(folder: Path) -> str | None:
    """The embedder (preset, hub id or folder) an existing index was built with."""
    identity = stored_identity(folder)
    return str(identity["name"]) if identity else None

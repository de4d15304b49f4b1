"""Load the service's models from settings: the embedder and the generator.

A thin mapping from ``Settings`` onto ``retriever.embedder`` and ``tuner.models``; the service's
lifespan and the CLI share it so both find weights the same way.
"""

from __future__ import annotations

from retriever.embedder import Embedder, load_embedder
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

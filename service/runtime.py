"""Process-wide runtime set-up: logging, the torch thread count, quiet model loading, the
settings read once with a one-line error (the command lines of ``service`` and ``eval``), and the
public name of a model configured by folder.

Called once by the CLI and the app's lifespan, never at import. It loads no model.
"""

from __future__ import annotations

import logging
from pathlib import PurePath
from typing import Any

from service.settings import Settings


def configure_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def configure_torch(settings: Settings) -> None:
    """Apply the thread count to batches (torch's default, all cores, when it is unset) and the
    search-latency thread settings of ``retriever.threads``: passive OpenMP waiting, set before
    torch loads (one thread per query instead, where torch had loaded first)."""
    from retriever import threads

    threads.prefer_passive_wait()
    threads.configure(settings.threads)


def quiet_transformers() -> None:
    """No per-tensor progress bars for one-shot commands; warnings still show."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_warning()


def public_name(name: str, hub_id: str | None = None) -> str:
    """A model's name as responses show it: a preset or hub name as is, a folder by its last part
    (a server's paths never reach a client). ``hub_id`` is the resolved hub id, None for a
    folder."""
    if hub_id:
        return name
    return PurePath(name).name or name


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:400]


class ConfigError(ValueError):
    """The settings (environment, YAML file or overrides) do not validate."""


def read_settings(overrides: dict[str, Any] | None = None) -> Settings:
    """The settings with ``overrides`` (None values ignored); one-line ``ConfigError`` if bad."""
    from pydantic import ValidationError

    try:
        return Settings(**{k: v for k, v in (overrides or {}).items() if v is not None})
    except (ValidationError, ValueError) as exc:
        raise ConfigError(f"invalid configuration: {one_line(exc)}") from None

"""What every ``ragtune`` command shares: the command group, settings with one-line errors,
quiet model loading, opening the index, re-embedding with a progress bar.

Commands are thin: parse, call one library function, map domain errors to a one-line message
and a non-zero exit. Nothing here imports ``eval`` (``data`` and ``eval`` run it in a child
process), nor loads a model at import.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import click

from service.runtime import ConfigError, one_line, read_settings
from service.settings import CONFIG_ENV, Settings

if TYPE_CHECKING:
    from retriever.index import Retriever


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help=f"YAML settings file (same as {CONFIG_ENV}=FILE).",
)
@click.version_option("0.1.0", prog_name="ragtune")
def main(config_file: str | None) -> None:
    """ragtune: a domain assistant that retrieves, answers with citations, and tunes itself."""
    if config_file:
        os.environ[CONFIG_ENV] = config_file


def load_settings(overrides: dict[str, Any] | None = None) -> Settings:
    from service.loading import export_database

    try:
        settings = read_settings(overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    export_database(settings)  # in-process trainers and started workers share its state
    return settings


def open_index(settings: Settings) -> Retriever:
    """Open the index with the configured embedder; domain errors become one-line exits."""
    from retriever.errors import RetrieverError
    from retriever.sources import ModelNotAvailable
    from service.loading import open_retriever

    try:
        return open_retriever(settings)
    except (RetrieverError, ModelNotAvailable) as exc:
        raise click.ClickException(one_line(exc)) from None


def reembed(retriever: Retriever, new: Any) -> dict[str, Any]:
    """``retriever.reindex(new)`` with a progress bar."""
    from tqdm import tqdm

    bar = tqdm(total=retriever.chunk_count, desc="re-embed", unit="chunk")

    def progress(done: int, total: int) -> None:
        bar.total = max(total, done)
        bar.n = done
        bar.refresh()

    try:
        return retriever.reindex(new, progress=progress)
    finally:
        bar.close()


def label(identity: dict[str, Any]) -> str:
    name = str(identity.get("name"))
    return f"{name} (fine-tuned: {identity['adapter']})" if identity.get("adapter") else name

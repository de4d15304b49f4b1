"""``ragtune ingest``, ``search`` and ``reindex``: write documents to the index, search it, and
re-embed it with another embedder (or roll back)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from retriever.config import SEARCH_MODES
from service.cli.common import label, load_settings, main, open_index, reembed
from service.runtime import one_line, quiet_transformers


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--batch", type=int, default=32, show_default=True, help="Documents per write.")
def ingest(paths: tuple[Path, ...], batch: int) -> None:
    """Add or update documents from files or folders (txt, md, html, jsonl; recursive)."""
    from tqdm import tqdm

    from retriever.errors import InvalidDocument
    from retriever.loaders import LoadError, iter_files, load_file
    from service.runtime import configure_logging, configure_torch

    settings = load_settings()
    configure_logging("warning")
    quiet_transformers()
    configure_torch(settings)
    retriever = open_index(settings)
    counts = {"added": 0, "updated": 0, "unchanged": 0, "failed": 0}
    failures: list[str] = []
    files = list(iter_files(list(paths)))
    try:
        for path, root in tqdm(files, desc="ingest", unit="file"):
            docs = []
            for item in load_file(path, root):
                if isinstance(item, LoadError):
                    counts["failed"] += 1
                    failures.append(f"{item.source}: {item.reason}")
                else:
                    docs.append(item)
            for i in range(0, len(docs), batch):
                chunk = docs[i : i + batch]
                try:  # one transaction and one batched embedding call per batch
                    results = retriever.upsert_many(chunk)
                except InvalidDocument:  # the batch wrote nothing: find the bad ones one by one
                    results = []
                    for doc in chunk:
                        try:
                            results.append(retriever.upsert(doc))
                        except InvalidDocument as exc:
                            counts["failed"] += 1
                            failures.append(f"{path} ({doc.id}): {exc}")
                for result in results:
                    counts[result.status] += 1
        if settings.retrieval.fit_fusion and retriever.fusion_fit_due:
            shares = retriever.fit_fusion()["weights"]  # as the service would, in the background
            click.echo(
                "hybrid dense share fitted: " + ", ".join(f"{k} {v}" for k, v in shares.items())
            )
    finally:
        retriever.close()
    for line in failures[:20]:
        click.echo(f"failed: {line}", err=True)
    if len(failures) > 20:
        click.echo(f"... and {len(failures) - 20} more failures", err=True)
    click.echo(" ".join(f"{k}={v}" for k, v in counts.items()) + f" files={len(files)}")
    if counts["failed"] and not (counts["added"] or counts["updated"] or counts["unchanged"]):
        raise SystemExit(1)


@main.command()
@click.argument("query")
@click.option("-k", type=int, default=5, show_default=True)
@click.option("--mode", type=click.Choice(SEARCH_MODES), default="hybrid", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a listing.")
def search(query: str, k: int, mode: str, as_json: bool) -> None:
    """Search the index and print the best passages."""
    from service.runtime import configure_logging

    settings = load_settings()
    configure_logging("warning")
    quiet_transformers()
    if not 1 <= k <= settings.limits.max_k:
        raise click.ClickException(f"-k must be between 1 and {settings.limits.max_k}")
    retriever = open_index(settings)
    try:
        hits = retriever.search(query, k=k, mode=mode)
    finally:
        retriever.close()
    if as_json:
        click.echo(json.dumps([h.__dict__ for h in hits], ensure_ascii=False, indent=2))
        return
    if not hits:
        click.echo("no results")
    for rank, h in enumerate(hits, 1):
        snippet = " ".join(h.text.split())[:160]
        click.echo(f"{rank:2}. {h.score:.4f}  {h.doc_id} [{h.start}:{h.end}]  {snippet}")


@main.command()
@click.option("--embedder", default=None, help="Embedder to re-embed with (default: settings).")
@click.option("--adapter", default=None, help="A fine-tuned embedder from the registry (its id).")
@click.option("--rollback", is_flag=True, help="Switch back to the previous embedder.")
def reindex(embedder: str | None, adapter: str | None, rollback: bool) -> None:
    """Re-embed the index with another embedder, then switch to it atomically."""
    from retriever.errors import RetrieverError
    from retriever.index import Retriever, stored_identity
    from retriever.sources import ModelNotAvailable
    from service.loading import embedder_for, retriever_config, tuned_embedder
    from service.runtime import configure_logging, configure_torch
    from tuner.registry import RecordNotFound, RegistryError

    if sum([embedder is not None, adapter is not None, rollback]) > 1:
        raise click.ClickException("give at most one of --embedder, --adapter, --rollback")
    settings = load_settings()
    configure_logging("warning")
    quiet_transformers()
    configure_torch(settings)
    current = stored_identity(settings.index_dir)
    if current is None:
        raise click.ClickException(f"no index at {settings.index_dir}; ingest documents first")
    try:
        retriever = Retriever(
            settings.index_dir, embedder_for(current, settings), retriever_config(settings)
        )
    except (RetrieverError, ModelNotAvailable, RecordNotFound, RegistryError) as exc:
        raise click.ClickException(one_line(exc)) from None
    try:
        if rollback:
            previous = retriever.previous_embedder()
            if not previous:
                raise click.ClickException("no previous embedder to roll back to")
            new = embedder_for(previous, settings)
        elif adapter is not None:
            new = tuned_embedder(adapter, settings)
        else:
            new = embedder_for({"name": embedder or settings.embedder}, settings)
        result = reembed(retriever, new)
    except (RetrieverError, ModelNotAvailable, RecordNotFound, RegistryError) as exc:
        raise click.ClickException(one_line(exc)) from None
    finally:
        retriever.close()
    if result["switched"]:
        click.echo(
            f"switched {result['chunks']} chunks from {label(current)} to {label(new.identity)}"
        )
    else:
        click.echo(f"nothing to do: {result['reason']}")


@main.command()
@click.option("--to-database", "url", default=None, help="PostgreSQL URL to copy the index into.")
@click.option("--schema", default="ragtune", show_default=True, help="Its schema (--to-database).")
@click.option(
    "--to-folder",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="An embedded index folder to copy the index into.",
)
@click.option("--batch", type=int, default=64, show_default=True, help="Documents per write.")
def migrate(url: str | None, schema: str, to_folder: Path | None, batch: int) -> None:
    """Copy the configured index (embedded, or the database's when database.url is set) into
    PostgreSQL or into an embedded folder, carrying its vectors (nothing is re-embedded that
    the index already holds). Run it again to resume: unchanged documents are skipped."""
    from tqdm import tqdm

    from retriever.config import RetrieverConfig
    from retriever.errors import RetrieverError
    from retriever.index import Retriever
    from retriever.migrate import copy_index

    if (url is None) == (to_folder is None):
        raise click.UsageError("give exactly one of --to-database and --to-folder")
    if batch < 1:
        raise click.BadParameter("must be >= 1", param_hint="--batch")
    settings = load_settings()
    source = open_index(settings)
    config: RetrieverConfig = source.config

    def open_target(embedder):  # noqa: ANN001, ANN202 - the carried embedder
        if to_folder is not None:
            return Retriever(to_folder, embedder, config)
        from retriever.postgres import PgRetriever

        return PgRetriever(str(url), embedder, config, schema=schema)

    bar = tqdm(total=len(source), desc="migrate", unit="doc")

    def progress(done: int, total: int) -> None:
        bar.n = done
        bar.refresh()

    try:
        result = copy_index(source, open_target, batch, progress)
    except (RetrieverError, ValueError) as exc:
        raise click.ClickException(one_line(exc)) from None
    finally:
        bar.close()
        source.close()
    click.echo(
        f"copied {result['documents']} documents ({result['added']} added, {result['updated']} "
        f"updated, {result['unchanged']} unchanged), {result['chunks']} chunks; "
        f"{result['embedded']} chunk texts embedded anew"
    )

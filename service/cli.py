"""The ``ragtune`` command line: thin commands over the same library functions as the API.

Each command parses its options, calls one library function and maps domain errors to a
one-line message and a non-zero exit. ``data`` and ``eval`` run the ``eval`` package in a
child process, so nothing here imports it (arrows point from eval to the rest, never back).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from service.settings import CONFIG_ENV, Settings


def _settings(overrides: dict[str, Any] | None = None) -> Settings:
    from pydantic import ValidationError

    try:
        return Settings(**{k: v for k, v in (overrides or {}).items() if v is not None})
    except (ValidationError, ValueError) as exc:
        raise click.ClickException(f"invalid configuration: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:400]


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


@main.command()
@click.option("--host", default=None, help="Address to bind (default from settings: 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default from settings: 8000).")
def serve(host: str | None, port: int | None) -> None:
    """Serve the assistant over HTTP on the embedded defaults."""
    import uvicorn

    from service.app import create_app
    from service.auth import check_bind
    from service.runtime import configure_logging

    settings = _settings({"host": host, "port": port})
    try:
        check_bind(settings)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    configure_logging(settings.log_level)
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level
    )


@main.command()
@click.option("--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml")
def config(fmt: str) -> None:
    """Print the effective configuration, secrets masked."""
    data = _settings().masked()
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        import yaml

        click.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip())


@main.command()
@click.argument("question")
@click.option(
    "--mode",
    type=click.Choice(["base", "rag"]),
    default="rag",
    show_default=True,
    help="rag: retrieve, then answer with citations; base: the generator alone.",
)
@click.option("-k", type=int, default=4, show_default=True, help="Passages to retrieve.")
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.option(
    "--server",
    default=None,
    metavar="URL",
    help="Ask a running server (e.g. http://127.0.0.1:8000) instead of loading models.",
)
@click.option("--api-key", envvar="RAGTUNE_API_KEY", default=None, help="Key for --server.")
def ask(
    question: str, mode: str, k: int, max_new_tokens: int, server: str | None, api_key: str | None
) -> None:
    """Ask one question, in-process or against a running server; prints the answer and the
    passages it cites."""
    if not question.strip():
        raise click.ClickException("the question is empty")
    body = {"question": question, "mode": mode, "k": k, "max_new_tokens": max_new_tokens}
    result = _ask_server(server, api_key, body) if server else _ask_here(body)
    click.echo(result["answer"])
    for i, c in enumerate(result["citations"], 1):
        snippet = " ".join(c["text"].split())[:120]
        click.echo(f"  [{i}] {c['doc_id']} [{c['start']}:{c['end']}] {snippet}")


def _ask_server(server: str, api_key: str | None, body: dict[str, Any]) -> dict[str, Any]:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.post(f"{server.rstrip('/')}/v1/query", json=body, headers=headers, timeout=600)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach {server}: {exc}") from None
    if r.status_code != 200:
        try:
            message = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = r.text[:200]
        raise click.ClickException(f"server answered {r.status_code}: {message}")
    return r.json()  # type: ignore[no-any-return]


def _ask_here(body: dict[str, Any]) -> dict[str, Any]:
    from retriever.errors import RetrieverError
    from retriever.sources import ModelNotAvailable
    from service.generation.engine import GenerationEngine
    from service.loading import generator_from_settings
    from service.runtime import configure_logging, configure_torch
    from tuner.prompts import base_messages, rag_messages

    settings = _settings()
    configure_logging("warning")
    _quiet_transformers()
    configure_torch(settings)
    if body["max_new_tokens"] > settings.limits.max_new_tokens:
        raise click.ClickException(f"--max-new-tokens must be <= {settings.limits.max_new_tokens}")
    hits: list[Any] = []
    if body["mode"] == "rag":
        retriever = _open_index(settings)
        try:
            hits = retriever.search(body["question"], k=body["k"])
        except RetrieverError as exc:
            raise click.ClickException(_one_line(exc)) from None
        finally:
            retriever.close()
    try:
        generator = generator_from_settings(settings)
    except ModelNotAvailable as exc:
        raise click.ClickException(str(exc)) from None
    engine = GenerationEngine(generator, max_batch=1)
    try:
        messages = (
            rag_messages(body["question"], hits)
            if body["mode"] == "rag"
            else base_messages(body["question"])
        )
        job = engine.submit(messages, body["max_new_tokens"]).wait()
    finally:
        engine.close()
    citations = [{"doc_id": h.doc_id, "start": h.start, "end": h.end, "text": h.text} for h in hits]
    return {"answer": job.text.strip(), "citations": citations}


def _quiet_transformers() -> None:
    """No per-tensor progress bars for one-shot commands; warnings still show."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_warning()


def _forward_to_eval(name: str, help_text: str) -> None:
    @main.command(
        name=name,
        help=help_text,
        add_help_option=False,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )
    @click.pass_context
    def _cmd(ctx: click.Context) -> None:
        cmd = [sys.executable, "-m", "eval", name, *ctx.args]
        raise SystemExit(subprocess.call(cmd, env={**os.environ, "RAGTUNE_PROG": "ragtune"}))


_forward_to_eval(
    "data", "Obtain demo and evaluation data (ragtune data debian-faq --lang en --out DIR)."
)
_forward_to_eval("eval", "Run evaluations (RAG vs FT vs hybrid).")


@main.command()
@click.option("--load", is_flag=True, help="Load both configured models (converting a GGUF once).")
def models(load: bool) -> None:
    """Show the model presets and where the configured embedder and generator resolve."""
    from retriever.embedder import EMBEDDER_PRESETS, resolve_embedder
    from retriever.sources import ModelNotAvailable
    from service.runtime import configure_logging
    from tuner.models import GENERATOR_PRESETS, resolve_generator

    settings = _settings()
    configure_logging("warning")
    for preset in [*EMBEDDER_PRESETS.values(), *GENERATOR_PRESETS.values()]:
        click.echo(f"{preset.role:9} {preset.name:40} {preset.hub_id}  ({preset.notes})")
    click.echo("")
    failed = False
    for role, name, resolver, path in (
        ("embedder", settings.embedder, resolve_embedder, settings.embedder_path),
        ("generator", settings.generator, resolve_generator, settings.generator_path),
    ):
        try:
            found = resolver(name, local_path=path, offline=settings.offline)
            click.echo(f"{role}: {name} -> {found.path} [{found.source}]")
        except ModelNotAvailable as exc:
            click.echo(str(exc), err=True)
            failed = True
    if failed:
        raise SystemExit(1)
    if load:
        from service.loading import embedder_from_settings, generator_from_settings

        emb = embedder_from_settings(settings)
        gen = generator_from_settings(settings)
        click.echo(f"loaded embedder ({emb.dim}-d) and generator from {gen.weights_dir}")


def _open_index(settings: Settings) -> Any:
    """Open the index with the configured embedder; domain errors become one-line exits."""
    from retriever.errors import RetrieverError
    from retriever.sources import ModelNotAvailable
    from service.loading import open_retriever

    try:
        return open_retriever(settings)
    except (RetrieverError, ModelNotAvailable) as exc:
        raise click.ClickException(_one_line(exc)) from None


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--batch", type=int, default=32, show_default=True, help="Documents per write.")
def ingest(paths: tuple[Path, ...], batch: int) -> None:
    """Add or update documents from files or folders (txt, md, html, jsonl; recursive)."""
    from tqdm import tqdm

    from retriever.errors import InvalidDocument
    from retriever.loaders import LoadError, iter_files, load_file
    from service.runtime import configure_logging, configure_torch

    settings = _settings()
    configure_logging("warning")
    _quiet_transformers()
    configure_torch(settings)
    retriever = _open_index(settings)
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
@click.option(
    "--mode", type=click.Choice(["dense", "sparse", "hybrid"]), default="hybrid", show_default=True
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a listing.")
def search(query: str, k: int, mode: str, as_json: bool) -> None:
    """Search the index and print the best passages."""
    from service.runtime import configure_logging

    settings = _settings()
    configure_logging("warning")
    _quiet_transformers()
    if not 1 <= k <= settings.limits.max_k:
        raise click.ClickException(f"-k must be between 1 and {settings.limits.max_k}")
    retriever = _open_index(settings)
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
    settings = _settings()
    configure_logging("warning")
    _quiet_transformers()
    configure_torch(settings)
    current = stored_identity(settings.index_dir)
    if current is None:
        raise click.ClickException(f"no index at {settings.index_dir}; ingest documents first")
    try:
        retriever = Retriever(
            settings.index_dir, embedder_for(current, settings), retriever_config(settings)
        )
    except (RetrieverError, ModelNotAvailable, RecordNotFound, RegistryError) as exc:
        raise click.ClickException(_one_line(exc)) from None
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
        raise click.ClickException(_one_line(exc)) from None
    finally:
        retriever.close()
    if result["switched"]:
        click.echo(
            f"switched {result['chunks']} chunks from {_label(current)} to {_label(new.identity)}"
        )
    else:
        click.echo(f"nothing to do: {result['reason']}")


def reembed(retriever: Any, new: Any) -> dict[str, Any]:
    """``retriever.reindex(new)`` with a progress bar."""
    from tqdm import tqdm

    bar = tqdm(total=retriever.chunk_count, desc="re-embed", unit="chunk")

    def progress(done: int, total: int) -> None:
        bar.total = max(total, done)
        bar.n = done
        bar.refresh()

    try:
        return retriever.reindex(new, progress=progress)  # type: ignore[no-any-return]
    finally:
        bar.close()


def _label(identity: dict[str, Any]) -> str:
    name = str(identity.get("name"))
    return f"{name} (fine-tuned: {identity['adapter']})" if identity.get("adapter") else name


from service import cli_tune  # noqa: E402,F401  (registers ``tune`` and ``adapters``)

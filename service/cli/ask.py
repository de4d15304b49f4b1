"""``ragtune ask``: one question, answered in this process (through the same answering pipeline
as the server) or by a running server over HTTP; prints the answer and the passages it cites."""

from __future__ import annotations

from typing import Any

import click

from service.cli.common import load_settings, main, open_index
from service.pipeline import MODES
from service.runtime import one_line, quiet_transformers


@main.command()
@click.argument("question")
@click.option(
    "--mode",
    type=click.Choice([m.name for m in MODES.values() if not m.uses_adapter]),
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
    """The pipeline in this process: the index is searched and closed before the generator
    loads (one process owns an index; the two never need to be in memory together), so the
    prompt is fitted to the token budget at submit, once the generator's tokenizer is here."""
    from retriever.errors import RetrieverError
    from retriever.sources import ModelNotAvailable
    from service.errors import ServiceError
    from service.generation.engine import GenerationEngine
    from service.generation.request import GenerationFailed
    from service.loading import generator_from_settings
    from service.pipeline import Ask, Pipeline, answer_mode
    from service.runtime import configure_logging, configure_torch

    settings = load_settings()
    configure_logging("warning")
    quiet_transformers()
    configure_torch(settings)
    ask = Ask.question(body["question"], mode=body["mode"], k=body["k"])
    ask.max_new_tokens = body["max_new_tokens"]
    retriever = open_index(settings) if answer_mode(ask.mode).retrieves else None
    try:
        prepared = Pipeline(settings.limits, retriever=retriever).prepare(ask)
    except ServiceError as exc:
        raise click.ClickException(_flag(exc.message)) from None
    except RetrieverError as exc:
        raise click.ClickException(one_line(exc)) from None
    finally:
        if retriever is not None:
            retriever.close()
    try:
        generator = generator_from_settings(settings)
    except ModelNotAvailable as exc:
        raise click.ClickException(str(exc)) from None
    try:
        engine = GenerationEngine(
            generator,
            max_batch=1,
            precision=settings.generator_precision,
            decode_threads=settings.decode_threads,
        )
    except ValueError as exc:  # int4 off the CPU
        raise click.ClickException(str(exc)) from None
    try:
        answer = Pipeline(settings.limits, engine=engine).submit(prepared)  # fits the budget
        answer.request.wait()
    except ServiceError as exc:
        raise click.ClickException(_flag(exc.message)) from None
    except GenerationFailed as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.close()
    citations = [
        {"doc_id": h.doc_id, "start": h.start, "end": h.end, "text": h.text} for h in answer.hits
    ]
    return {"answer": answer.text, "citations": citations}


def _flag(message: str) -> str:
    """A limit message in the command's own words: ``max_new_tokens`` is ``--max-new-tokens``."""
    return message.replace("max_new_tokens", "--max-new-tokens").replace("k must", "-k must")

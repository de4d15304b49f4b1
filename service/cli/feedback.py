"""``ragtune feedback``: list and export the ratings users gave answers (the answer log's)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from service.cli.common import load_settings, main

PAGE = 500


@main.group()
def feedback() -> None:
    """List and export ratings of answers."""


def _rows(rating: str | None, limit: int | None) -> Iterator[dict[str, Any]]:
    from service.answerlog import AnswerLog

    settings = load_settings()
    path = settings.layout.answers
    if not path.is_file():
        raise click.ClickException(f"no answer log at {path}: nothing was answered and rated yet")
    log = AnswerLog(path, settings.answer_log.retention_days)
    try:
        offset = 0
        while limit is None or offset < limit:
            size = PAGE if limit is None else min(PAGE, limit - offset)
            _, page = log.feedback(rating=rating, offset=offset, limit=size)
            yield from page
            if len(page) < size:
                return
            offset += len(page)
    finally:
        log.close()


def _preference_lines(kind: str) -> Iterator[str]:
    from service.answerlog import AnswerLog
    from service.cli.common import open_index
    from service.preferences import collect
    from tuner.config import DataSpec, FeedbackSpec, Recipe

    settings = load_settings()
    path = settings.layout.answers
    if not path.is_file():
        raise click.ClickException(f"no answer log at {path}: nothing was answered and rated yet")
    recipe = Recipe(name="export", method=kind, datasets=[DataSpec(feedback=FeedbackSpec())])
    log, index = AnswerLog(path, settings.answer_log.retention_days), open_index(settings)
    try:
        rows, used = collect(log, index, FeedbackSpec(), recipe)
    finally:
        index.close()
        log.close()
    for reason, n in sorted(used["skipped"].items()):
        click.echo(f"left out {n}: {reason}", err=True)
    for row in rows:
        yield json.dumps(row.to_json(), ensure_ascii=False) + "\n"


rating_option = click.option("--rating", type=click.Choice(["up", "down"]), help="Only these.")


@feedback.command("list")
@rating_option
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
def feedback_list(rating: str | None, limit: int) -> None:
    """Ratings, newest first: answer id, key, rating, the question and a correction if any."""
    for row in _rows(rating, limit):
        answer = row.get("answer") or {}
        asked = next(
            (m["content"] for m in reversed(answer.get("messages", [])) if m["role"] == "user"),
            "(answer record expired)",
        )
        line = f"{row['answer_id']}  {row['key_name']}  {row['rating']:4}  {asked[:60]}"
        if row.get("correction"):
            line += f"  -> {row['correction'][:40]}"
        click.echo(line)


@feedback.command("export")
@rating_option
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Default: stdout.")
@click.option(
    "--as",
    "kind",
    type=click.Choice(["ratings", "kto", "dpo"]),
    default="ratings",
    show_default=True,
    help="ratings: each rating with its answer record; kto/dpo: the preference rows a kto or "
    "dpo recipe would train on (prompts rebuilt as served; stale ratings left out).",
)
def feedback_export(rating: str | None, out: Path | None, kind: str) -> None:
    """Every rating with its answer record, or the preference rows made of them, as JSON lines."""
    if kind != "ratings" and rating:
        raise click.ClickException("--rating filters --as ratings only (kto and dpo use both)")
    lines = (
        (json.dumps(row, ensure_ascii=False) + "\n" for row in _rows(rating, None))
        if kind == "ratings"
        else _preference_lines(kind)
    )
    if out is None:
        for line in lines:
            click.echo(line, nl=False)
        return
    tmp = out.with_name(out.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            count = sum(1 for line in lines if f.write(line))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    noun = "ratings" if kind == "ratings" else f"{kind} rows"
    click.echo(f"{count} {noun} written to {out}", err=True)

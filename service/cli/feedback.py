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
def feedback_export(rating: str | None, out: Path | None) -> None:
    """Every rating with its answer record, as JSON lines."""
    lines = (json.dumps(row, ensure_ascii=False) + "\n" for row in _rows(rating, None))
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
    click.echo(f"{count} ratings written to {out}", err=True)

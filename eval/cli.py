"""Command line of the eval package: datasets (``data``) and evaluation runs (``eval``).

The service's ``ragtune`` command forwards ``data`` and ``eval`` here in a child process.
Errors end the process with one line and a non-zero exit.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """ragtune datasets and evaluations."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@main.group()
def data() -> None:
    """Obtain demo and evaluation data."""


@data.command("debian-faq")
@click.option("--lang", type=click.Choice(["en", "zh"]), default="en", show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder to write (BEIR files plus documents/).",
)
@click.option(
    "--deb-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Use .deb files already in this folder.",
)
@click.option("--mirror", help="Debian mirror URL for the HTTP fallback (default: apt's sources).")
@click.option("--no-apt", is_flag=True, help="Do not try apt-get download.")
def debian_faq_cmd(
    lang: str, out: Path, deb_dir: Path | None, mirror: str | None, no_apt: bool
) -> None:
    """The Debian FAQ (questions, answers) with the Debian Reference as distractors."""
    from eval.datasets.deb import DebError
    from eval.datasets.debian import debian_faq

    with tempfile.TemporaryDirectory(prefix="ragtune-deb-") as work:
        try:
            manifest = debian_faq(
                lang, out, work=Path(work), deb_dir=deb_dir, mirror=mirror, use_apt=not no_apt
            )
        except (DebError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
    checks = manifest["checks"]
    click.echo(
        f"wrote {out}: {checks['faq_pairs']} questions, {checks['faq_pairs']} answers, "
        f"{checks['reference_sections']} reference sections; "
        f"questions found in indexed text: {checks['questions_in_indexed_text']}"
    )
    click.echo(json.dumps(manifest["packages"]))


@main.command("eval", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def eval_cmd() -> None:
    """Run evaluations (not built yet)."""
    raise click.ClickException(
        "'ragtune eval' is not built yet: the evaluation harness arrives "
        "with its issue; see docs/roadmap.md"
    )

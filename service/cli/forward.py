"""``ragtune data`` and ``ragtune eval``: forwarded to ``python -m eval`` in a child process, so
nothing in the service imports the ``eval`` package (arrows point from eval to the rest)."""

from __future__ import annotations

import os
import subprocess
import sys

import click

from service.cli.common import main


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

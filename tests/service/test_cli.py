"""The ragtune command lists its commands and runs them against the same library code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from service.cli import main

COMMANDS = ["serve", "ingest", "search", "ask", "tune", "eval", "data", "config", "feedback"]


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    listed = [
        ln.split()[0] for ln in result.output.split("Commands:")[1].splitlines() if ln.strip()
    ]
    assert set(COMMANDS) <= set(listed)


def test_installed_console_script_runs() -> None:
    exe = Path(sys.executable).parent / "ragtune"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "serve" in out.stdout


def test_ask_answers_with_the_configured_generator(
    tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAGTUNE_GENERATOR", str(tiny_llama))
    result = CliRunner().invoke(
        main, ["ask", "what is debian ?", "--mode", "base", "--max-new-tokens", "4"]
    )
    assert result.exit_code == 0, result.output
    assert len(result.stdout.split()) == 4


def test_ask_with_unavailable_model_fails_with_the_sources_tried(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RAGTUNE_GENERATOR", str(tmp_path / "missing"))
    result = CliRunner().invoke(main, ["ask", "hello"])
    assert result.exit_code == 1 and "No source could provide the generator" in result.output


def test_empty_question_is_refused() -> None:
    result = CliRunner().invoke(main, ["ask", "  "])
    assert result.exit_code == 1 and "empty" in result.output


def test_models_command_shows_where_each_model_resolves() -> None:
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    assert "embedder: all-MiniLM-L6-v2 ->" in result.output and "[package]" in result.output


def test_data_command_runs_the_eval_package_in_a_child_process() -> None:
    exe = Path(sys.executable).parent / "ragtune"
    out = subprocess.run(
        [str(exe), "data", "debian-faq", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "Usage: ragtune data debian-faq" in out.stdout and "--lang" in out.stdout

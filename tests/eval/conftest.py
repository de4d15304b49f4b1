"""Harness test data: settings naming the tiny models (``tiny_st``, ``tiny_llama``) with a
registry holding a random LoRA (``tiny_lora``), and a small SQuAD-style file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

SQUAD = [
    ("apt installs packages from the archive", "what does apt do", "installs packages"),
    ("grub shows the boot menu on the disk", "what shows the boot menu", "grub"),
    ("bash is the login shell of the user", "which shell is the login shell", "bash"),
    ("dpkg unpacks a package file", "what unpacks a package file", "dpkg"),
    ("the kernel mirror holds the archive", "what holds the archive", "the kernel mirror"),
    ("a user menu lists the shell", "what lists the shell", "a user menu"),
]


@pytest.fixture
def eval_settings(tiny_llama: Path, tiny_st: Path, tiny_lora: Path, tmp_path: Path):
    """Settings naming the tiny models, with one adapter (``gamma-v1``) in the registry."""
    from service.settings import Settings
    from tuner.registry import Registry

    data = tmp_path / "data"
    Registry(data / "adapters").save(
        lambda folder: shutil.copytree(tiny_lora, folder, dirs_exist_ok=True),
        name="gamma",
        base_model=str(tiny_llama),
    )
    return Settings(data_dir=data, generator=str(tiny_llama), embedder=str(tiny_st))


@pytest.fixture
def squad_file(tmp_path: Path) -> Path:
    rows = [
        {"id": f"s{i}", "context": c, "question": q, "answers": [a]}
        for i, (c, q, a) in enumerate(SQUAD)
    ]
    path = tmp_path / "squad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path

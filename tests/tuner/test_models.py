"""Generators load through the preset path: a tiny Llama in the test, the real default when slow."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest
import torch

from service.generation.reference import complete
from tuner.models import (
    CONVERSION_MARKER,
    converted_dir,
    ensure_converted,
    load_generator,
    pick_device,
    resolve_generator,
)

QUESTION = [{"role": "user", "content": "what is debian ?"}]


def test_tiny_llama_loads_by_folder_in_float32(tiny_llama: Path, tmp_path: Path) -> None:
    gen = load_generator(str(tiny_llama), cache_dir=tmp_path)
    assert gen.resolved.source == "path"
    assert gen.model.dtype == torch.float32
    assert next(gen.model.parameters()).device.type == "cpu"
    out = complete(gen, QUESTION, max_new_tokens=5)
    assert out.completion_tokens == 5 and out.prompt_tokens > 3


def test_tiny_llama_loads_as_explicit_path_for_a_preset(tiny_llama: Path, tmp_path: Path) -> None:
    gen = load_generator("SmolLM2-135M-Instruct", cache_dir=tmp_path, local_path=tiny_llama)
    assert gen.weights_dir == tiny_llama
    assert gen.model.config.hidden_size == 32


def test_greedy_generation_is_deterministic(tiny_llama: Path, tmp_path: Path) -> None:
    gen = load_generator(str(tiny_llama), cache_dir=tmp_path)
    assert complete(gen, QUESTION, 6).text == complete(gen, QUESTION, 6).text


def test_cuda_without_a_gpu_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA device"):
        pick_device("cuda")
    assert pick_device("auto") == "cpu"
    with pytest.raises(ValueError, match="device must be"):
        pick_device("tpu")


def test_default_generator_resolves_to_the_packaged_gguf() -> None:
    found = resolve_generator()
    assert found.source == "package" and found.is_gguf


def _slow_fake_convert(gguf: Path, out: Path) -> None:
    """Stands in for the dequantiser: records each call in a shared log and takes a while."""
    with (gguf.parent / "calls.log").open("a") as log:
        log.write(f"{out.name}\n")
    time.sleep(0.5)
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({"converted_from": gguf.name}))


def _convert_in_child(gguf: str, cache: str) -> None:
    ensure_converted(Path(gguf), Path(cache), convert=_slow_fake_convert)


def test_two_processes_convert_a_gguf_once(tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    cache = tmp_path / "cache"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_convert_in_child, args=(str(gguf), str(cache))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0]
    assert (tmp_path / "calls.log").read_text().count("\n") == 1
    target = converted_dir(gguf, cache)
    assert (target / CONVERSION_MARKER).is_file()
    assert not list(cache.glob("*.tmp-*"))
    # a third call finds the finished folder and converts nothing
    assert ensure_converted(gguf, cache, convert=_slow_fake_convert) == target
    assert (tmp_path / "calls.log").read_text().count("\n") == 1


def test_a_killed_conversion_leaves_no_trusted_folder(tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF-1")

    def crash(_: Path, out: Path) -> None:
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        ensure_converted(gguf, tmp_path / "c", convert=crash)
    assert not converted_dir(gguf, tmp_path / "c").exists()
    target = ensure_converted(gguf, tmp_path / "c", convert=_slow_fake_convert)
    assert (target / "config.json").is_file() and not list((tmp_path / "c").glob("*.tmp-*"))


def test_a_changed_gguf_gets_its_own_folder(tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"v1")
    first = converted_dir(gguf, tmp_path)
    gguf.write_bytes(b"v2")
    assert converted_dir(gguf, tmp_path) != first


@pytest.mark.slow
def test_real_default_generator_converts_once_then_loads_from_cache(tmp_path: Path) -> None:
    cache = tmp_path / "models"
    gen = load_generator(cache_dir=cache)
    assert gen.resolved.source == "package" and gen.model.dtype == torch.float32
    assert (gen.weights_dir / "model.safetensors").is_file()
    assert (gen.weights_dir / CONVERSION_MARKER).is_file()
    answer = complete(gen, [{"role": "user", "content": "What is the capital of France?"}], 16)
    assert "paris" in answer.text.lower()
    marker_time = (gen.weights_dir / CONVERSION_MARKER).stat().st_mtime_ns
    again = load_generator(cache_dir=cache)
    assert again.weights_dir == gen.weights_dir
    assert (gen.weights_dir / CONVERSION_MARKER).stat().st_mtime_ns == marker_time

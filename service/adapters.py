"""PEFT adapters on the one shared generator: loaded and unloaded at runtime, chosen per request.

Adapters come only from the registry folder (``DATA_DIR/adapters/<name>``) in safetensors form;
a request names an adapter, never a path. The base model is wrapped in a ``PeftModel`` on the
first load; a batch runs with one adapter set active, or with adapters disabled for base-model
requests. Loading and unloading wait for the running batch (one lock with the engine).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class AdapterNotFound(LookupError):
    def __init__(self, name: str, why: str = "not found") -> None:
        super().__init__(f"adapter {name!r}: {why}")
        self.name = name


class AdapterSet:
    def __init__(self, generator: Any, registry: Path) -> None:
        self.generator = generator
        self.registry = registry
        self.lock = threading.RLock()  # held by the engine for a whole batch
        self._loaded: dict[str, Path] = {}
        self._waiting = 0  # loads/unloads waiting for the lock: the engine stops taking joins
        self._count = threading.Lock()
        self.generation = 0  # bumped on every load and unload: cached keys/values go stale

    @property
    def change_waiting(self) -> bool:
        """True while a load or unload waits for the running batch to drain."""
        return self._waiting > 0

    @contextmanager
    def _changing(self) -> Iterator[None]:
        with self._count:
            self._waiting += 1
        try:
            self.lock.acquire()
        finally:
            with self._count:
                self._waiting -= 1
        try:
            yield
        finally:
            self.lock.release()

    def folder(self, name: str) -> Path:
        if not NAME.match(name):
            raise AdapterNotFound(name, "names are 1-64 letters, digits, '.', '_' or '-'")
        path = self.registry / name
        if not (path / "adapter_config.json").is_file():
            raise AdapterNotFound(name, f"no adapter_config.json under {self.registry}")
        if not (path / "adapter_model.safetensors").is_file():
            raise AdapterNotFound(name, "only safetensors adapters are loaded")
        if _embedder_adapter(path):
            raise AdapterNotFound(
                name, "an embedder (retriever) adapter: activate it with POST /v1/index/reindex"
            )
        return path

    def available(self) -> list[str]:
        if not self.registry.is_dir():
            return []
        return sorted(
            p.name
            for p in self.registry.iterdir()
            if NAME.match(p.name)
            and (p / "adapter_model.safetensors").is_file()
            and not _embedder_adapter(p)
        )

    def loaded(self) -> list[str]:
        return sorted(self._loaded)

    def load(self, name: str) -> None:
        from peft import PeftModel

        path = self.folder(name)
        with self._changing():
            if name in self._loaded:
                return
            model = self.generator.model
            if isinstance(model, PeftModel):
                model.load_adapter(str(path), adapter_name=name)
            else:
                self.generator.model = PeftModel.from_pretrained(
                    model, str(path), adapter_name=name
                )
            self.generator.model.eval()
            self._loaded[name] = path
            self.generation += 1
            log.info("adapter %s loaded from %s", name, path)

    def unload(self, name: str) -> None:
        with self._changing():
            if name not in self._loaded:
                raise AdapterNotFound(name, "not loaded")
            self.generator.model.delete_adapter(name)
            del self._loaded[name]
            self.generation += 1

    @contextmanager
    def active(self, name: str | None) -> Iterator[None]:
        """Run a batch with ``name`` active, or with every adapter off when ``name`` is None."""
        with self.lock:
            model = self.generator.model
            if not self._loaded:
                if name is not None:
                    raise AdapterNotFound(name, "not loaded")
                yield
                return
            if name is None:
                with model.disable_adapter():
                    yield
                return
            if name not in self._loaded:
                raise AdapterNotFound(name, "not loaded")
            model.set_adapter(name)
            yield


def _embedder_adapter(folder: Path) -> bool:
    """Whether an adapter folder was trained on the embedder (PEFT task FEATURE_EXTRACTION)."""
    try:
        config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("task_type") == "FEATURE_EXTRACTION"

"""PEFT adapters on the one shared generator: loaded and unloaded at runtime, chosen per request.

Adapters come only from the registry folder (``DATA_DIR/adapters/<name>``) in safetensors form;
a request names an adapter, never a path, and no error names a folder. The base model is wrapped
in a ``PeftModel`` on the first load; a batch runs with one adapter set active, or with adapters
disabled for base-model requests. Loading and unloading wait for the running batch (one lock
with the engine).

A request holds the adapter it runs with (``use``): loaded on first use, at most ``max_loaded``
at once, the least recently used one unloaded to make room once the new one has loaded (a load
that fails unloads nothing, leaves the model as it was, and is refused at once until the
adapter's files change). An adapter some request still holds
(picked, queued or generating) is never unloaded to make room; when every loaded one is held,
``AdaptersBusy`` says to retry. Nor is it unloaded or deleted by an admin: ``AdapterInUse``
refuses that until its requests finish. Loads and unloads run one at a time.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tuner.registry import FOLDER, FOLDER_MAX_CHARS

log = logging.getLogger(__name__)
VIRTUAL = ("PREFIX_TUNING", "PROMPT_TUNING", "P_TUNING")  # PEFT types that add prompt tokens


class AdapterNotFound(LookupError):
    def __init__(self, name: str, why: str = "not found") -> None:
        super().__init__(f"adapter {name!r}: {why}")
        self.name = name


class AdapterUnusable(RuntimeError):
    """The registry holds the adapter but its files cannot be loaded (damaged weights)."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"adapter {name!r} cannot be loaded: {why}")
        self.name = name
        self.why = why


class AdaptersBusy(RuntimeError):
    """Every loaded adapter is held by a running request and no more may be loaded."""


class AdapterInUse(RuntimeError):
    """An adapter a request holds (picked, queued or generating) cannot be unloaded now."""

    def __init__(self, name: str) -> None:
        super().__init__(f"adapter {name!r} is in use by a request; retry once its requests finish")
        self.name = name


class Use:
    """One request's hold on an adapter: held while this object lives and its generation
    request (``request``, set once submitted) has not finished."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.request: Any = None  # service.generation.request.GenerationRequest

    @property
    def held(self) -> bool:
        return self.request is None or not self.request.done.is_set()


class AdapterSet:
    def __init__(self, generator: Any, registry: Path, max_loaded: int | None = None) -> None:
        self.generator = generator
        self.registry = registry
        self.max_loaded = max_loaded  # None: no bound (the eval harness loads what it names)
        self.lock = threading.RLock()  # held by the engine for a whole batch
        self._loaded: dict[str, Path] = {}
        self._loading = threading.RLock()  # one load (with its eviction) at a time
        self._book = threading.Lock()  # guards the use bookkeeping below
        self._uses: dict[str, weakref.WeakSet[Use]] = {}
        self._last_used: dict[str, int] = {}
        self._leaving: set[str] = set()  # being unloaded: no new holds
        self._unusable: dict[str, tuple[tuple[int, ...], str]] = {}  # name: (files' stamp, why)
        self._clock = itertools.count()
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
        if not FOLDER.fullmatch(name):
            raise AdapterNotFound(
                name, f"names are 1-{FOLDER_MAX_CHARS} letters, digits, '.', '_' or '-'"
            )
        path = self.registry / name
        if not (path / "adapter_config.json").is_file():
            raise AdapterNotFound(name, "not in the adapter registry; see GET /v1/adapters")
        if not (path / "adapter_model.safetensors").is_file():
            raise AdapterNotFound(
                name, "has no adapter_model.safetensors (only safetensors weights are loaded)"
            )
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
            if FOLDER.fullmatch(p.name)
            and (p / "adapter_model.safetensors").is_file()
            and not _embedder_adapter(p)
        )

    def loaded(self) -> list[str]:
        return sorted(self._loaded)

    def virtual_tokens(self, name: str) -> int:
        """Prompt positions ``name`` adds in front of every prompt (prefix, prompt and
        p-tuning: its ``num_virtual_tokens``); 0 for other kinds."""
        try:
            path = self.folder(name) / "adapter_config.json"
            config = json.loads(path.read_text(encoding="utf-8"))
        except (AdapterNotFound, OSError, ValueError):
            return 0
        if not isinstance(config, dict) or config.get("peft_type") not in VIRTUAL:
            return 0
        tokens = config.get("num_virtual_tokens")
        return tokens if isinstance(tokens, int) and tokens > 0 else 0

    def use(self, name: str) -> Use:
        """Hold ``name`` for one request, loading it first if needed (making room within the
        set's bound). Two first uses at once load it once."""
        hold = self._hold(name)
        if hold is not None:
            return hold
        with self._loading:
            self.load(name)
            hold = self._hold(name)
        if hold is None:  # unloaded by an admin between the load and the hold
            raise AdapterNotFound(name, "not loaded")
        return hold

    def _hold(self, name: str) -> Use | None:
        with self._book:
            if name not in self._loaded or name in self._leaving:
                return None
            hold = Use(name)
            self._uses.setdefault(name, weakref.WeakSet()).add(hold)
            self._last_used[name] = next(self._clock)
            return hold

    def in_use(self, name: str) -> bool:
        """Whether a request still holds ``name``."""
        return any(u.held for u in list(self._uses.get(name, ())))

    def _pick_room(self, bound: int | None) -> list[str]:
        """The least recently used adapters no request holds that must go for one more to fit,
        marked leaving (no new holds); ``AdaptersBusy`` when too few are idle."""
        with self._book:
            over = 0 if bound is None else len(self._loaded) - bound + 1
            if over <= 0:
                return []
            idle = [n for n in self._loaded if n not in self._leaving and not self.in_use(n)]
            if len(idle) < over:
                raise AdaptersBusy(
                    f"all {len(self._loaded)} loaded adapters are in use "
                    f"(at most {bound} are loaded at once); retry shortly"
                )
            victims = sorted(idle, key=lambda n: self._last_used.get(n, -1))[:over]
            self._leaving.update(victims)
            return victims

    def _evict(self, victims: list[str]) -> None:
        for victim in victims:
            try:
                log.info("adapter %s unloaded to make room (least recently used)", victim)
                self._unload(victim)
            except AdapterNotFound:
                pass  # already gone: the room is made all the same

    def load(self, name: str) -> None:
        """Load ``name`` (nothing to do when loaded), then unload the least recently used idle
        adapters beyond the set's bound. A load that fails evicts nothing, leaves the model as
        it was, and is remembered: until the adapter's files change it is refused at once."""
        from peft import PeftModel

        path = self.folder(name)
        if name in self._loaded:
            return
        stamp = _stamp(path)
        known = self._unusable.get(name)
        if known is not None and known[0] == stamp:
            raise AdapterUnusable(name, known[1])
        with self._loading:
            if name in self._loaded:
                return
            try:
                _check_weights(name, path)
            except AdapterUnusable as exc:
                self._unusable[name] = (stamp, exc.why)
                raise
            victims = self._pick_room(self.max_loaded)
            try:
                with self._changing():  # one drained batch for the load and its evictions
                    try:
                        self._load(name, path, PeftModel)
                    except Exception as exc:  # noqa: BLE001 - damaged files: a clear refusal
                        log.exception("adapter %s could not be loaded", name)
                        why = "its files are damaged or do not fit the model"
                        self._unusable[name] = (stamp, why)
                        raise AdapterUnusable(name, why) from exc
                    self._evict(victims)
            finally:
                with self._book:
                    self._leaving.difference_update(victims)
            self._unusable.pop(name, None)

    def _load(self, name: str, path: Path, peft_model: Any) -> None:
        """Add ``name`` to the model; on failure take out whatever the attempt added."""
        model = self.generator.model
        if isinstance(model, peft_model):
            try:
                model.load_adapter(str(path), adapter_name=name)
            except BaseException:
                if name in model.peft_config:
                    model.delete_adapter(name)
                raise
        else:
            try:
                self.generator.model = peft_model.from_pretrained(
                    model, str(path), adapter_name=name
                )
            except BaseException:
                _strip_adapter_layers(model)  # the base model as it was before the attempt
                raise
        self.generator.model.eval()
        with self._book:
            self._loaded[name] = path
            self._last_used[name] = next(self._clock)
        self.generation += 1
        log.info("adapter %s loaded from %s", name, path)

    def unload(
        self, name: str, *, missing_ok: bool = False, before: Callable[[], Any] | None = None
    ) -> None:
        """Unload ``name``; ``AdapterInUse`` while a request holds it. ``before`` runs once no
        request holds it and none can take a hold (a deletion from the registry), then the
        unload; ``missing_ok``: nothing to unload is no error."""
        with self._loading:
            with self._book:
                if name in self._leaving or self.in_use(name):
                    raise AdapterInUse(name)
                if name not in self._loaded and not missing_ok:
                    raise AdapterNotFound(name, "not loaded")
                self._leaving.add(name)
            try:
                if before is not None:
                    before()
                if name in self._loaded:
                    self._unload(name)
            finally:
                with self._book:
                    self._leaving.discard(name)

    def _unload(self, name: str) -> None:
        with self._changing():
            if name not in self._loaded:
                raise AdapterNotFound(name, "not loaded")
            self.generator.model.delete_adapter(name)
            with self._book:
                del self._loaded[name]
                self._last_used.pop(name, None)
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


def _check_weights(name: str, path: Path) -> None:
    """``AdapterUnusable`` unless the weights file's header reads as safetensors (a damaged
    file is refused before any layer is added to the model)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path / "adapter_model.safetensors"), framework="pt") as weights:
            weights.keys()
    except Exception as exc:  # noqa: BLE001 - whatever the reader raises, the file is damaged
        raise AdapterUnusable(name, "its adapter_model.safetensors is damaged") from exc


def _stamp(path: Path) -> tuple[int, ...]:
    """The adapter files' modification times and sizes: a failed load is retried once they
    change."""
    stamp: list[int] = []
    for file in ("adapter_config.json", "adapter_model.safetensors"):
        try:
            info = (path / file).stat()
        except OSError:
            stamp += [-1, -1]
        else:
            stamp += [info.st_mtime_ns, info.st_size]
    return tuple(stamp)


def _strip_adapter_layers(model: Any) -> None:
    """Put back the base modules a failed first ``PeftModel.from_pretrained`` wrapped in adapter
    layers (it injects them into the model it is given before it reads the weights)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    kinds = (BaseTunerLayer, AuxiliaryTrainingWrapper)
    wrapped = [key for key, module in model.named_modules() if isinstance(module, kinds)]
    for key in wrapped:
        if any(key.startswith(outer + ".") for outer in wrapped):
            continue  # inside a layer put back whole
        parent_key, _, child = key.rpartition(".")
        layer = model.get_submodule(key)
        if isinstance(layer, BaseTunerLayer):
            base = layer.get_base_layer()
        else:
            base = layer.original_module
        setattr(model.get_submodule(parent_key), child, base)
    if "peft_config" in vars(model):
        del model.peft_config

"""Re-embed the live index in the background, then switch to the new embedder atomically.

``Reindexer.start(target)`` checks the target at once (an unknown adapter or no rollback target
raises before anything runs), then loads the embedder and runs ``Retriever.reindex`` in a
thread: searches and writes go on against the old vectors while every chunk is embedded into a
shadow space, writes made meanwhile are embedded into both, and the switch is one swap under
the index's write lock. One re-embedding at a time; ``status()`` says how far it is. A target is
``{"adapter": id}`` (a fine-tuned embedder from the registry), ``{"embedder": name}`` (a preset,
hub id or folder), ``{"rollback": True}`` (the embedder before the last switch) or
``{"refresh": True}`` (the embedder in use, for an index whose chunks were embedded without
their context: ``Retriever.needs_reembedding``; the app starts it at startup).

Knows nothing of HTTP; the app's job runner calls ``start`` when a retriever job succeeds.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from service.loading import embedder_for, embedder_record, tuned_embedder
from tuner.jobstore import client_error

log = logging.getLogger(__name__)


class ReindexBusy(RuntimeError):
    """A re-embedding is already running."""


class NoRollback(LookupError):
    """The index has no previous embedder to go back to."""


@dataclass
class ReindexStatus:
    state: str = "idle"  # idle | running | succeeded | failed | stopped (at shutdown)
    target: dict[str, Any] | None = None
    reason: str | None = None  # who asked: "api", "cli" or "job <id>"
    done: int = 0  # chunks embedded into the shadow space
    total: int = 0
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    result: dict[str, Any] | None = None  # Retriever.reindex's answer

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Reindexer:
    """Background re-embedding of ``state.retriever``; on success ``state.embedder`` follows."""

    def __init__(self, state: Any) -> None:
        self._state = state
        self._lock = threading.Lock()
        self._status = ReindexStatus()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def status(self) -> ReindexStatus:
        with self._lock:
            return ReindexStatus(**asdict(self._status))

    def start(self, target: dict[str, Any], reason: str = "api") -> ReindexStatus:
        """Check ``target`` and start re-embedding; ``ReindexBusy`` while one runs."""
        load = self._loader(target)
        with self._lock:
            if self._status.state == "running":
                raise ReindexBusy("a re-embedding is already running; wait for it to finish")
            self._status = ReindexStatus(
                "running", dict(target), reason, 0, self._state.retriever.chunk_count, time.time()
            )
            self._thread = threading.Thread(
                target=self._run, args=(load,), name="reindex", daemon=True
            )
            self._thread.start()
        log.info("re-embedding the index with %s (%s)", target, reason)
        return self.status()

    def join(self, timeout: float | None = None) -> ReindexStatus:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.status()

    def close(self) -> None:
        """Stop a running re-embedding after its current batch (the next start continues it)."""
        self._stop.set()
        self.join()

    def _loader(self, target: dict[str, Any]) -> Any:
        """A function loading the target's embedder; what can be checked now is checked now."""
        settings = self._state.settings
        if target.get("refresh"):
            return lambda: self._state.embedder
        if target.get("rollback"):
            identity = self._state.index().previous_embedder()
            if not identity:
                raise NoRollback("the index has no previous embedder to roll back to")
            if identity.get("adapter"):
                self._check_adapter(str(identity["adapter"]))
            return lambda: embedder_for(identity, settings)
        if target.get("adapter"):
            adapter_id = str(target["adapter"])
            self._check_adapter(adapter_id)
            return lambda: tuned_embedder(adapter_id, settings)
        if target.get("embedder"):
            name = str(target["embedder"])
            return lambda: embedder_for({"name": name}, settings)
        raise ValueError("target: one of adapter, embedder, rollback or refresh")

    def _check_adapter(self, adapter_id: str) -> None:
        embedder_record(adapter_id, self._state.settings)

    def _run(self, load: Any) -> None:
        def progress(done: int, total: int) -> None:
            with self._lock:
                self._status.done, self._status.total = done, max(total, done)

        try:
            embedder = load()
            result = self._state.retriever.reindex(embedder, progress=progress, stop=self._stop)
            if result.get("switched"):
                self._state.embedder = embedder
                self._state.loaded["embedder"] = embedder.identity
        except Exception as exc:  # noqa: BLE001 - recorded on the status, the index is untouched
            log.exception("re-embedding failed; the index keeps its current embedder")
            with self._lock:
                error = client_error(f"{type(exc).__name__}: {exc}", self._state.settings.data_dir)
                self._status.state, self._status.error = "failed", error
                self._status.finished = time.time()
            return
        with self._lock:
            stopped = result.get("reason") == "stopped"
            self._status.state = "stopped" if stopped else "succeeded"
            self._status.result = result
            self._status.finished = time.time()
        log.info("re-embedding done: %s", result)

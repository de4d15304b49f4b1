"""Locks: a readers-writer lock for searches vs mutations, and a per-folder process lock."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from retriever.errors import RetrieverError


class IndexBusy(RetrieverError):
    """Another process has this index open."""


class RWLock:
    """Many readers or one writer; a waiting writer blocks new readers (no writer starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer and not self._waiting)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            self._cond.wait_for(lambda: not self._writer and self._readers == 0)
            self._waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class FolderLock:
    """An exclusive OS lock on an index folder, so two processes never write one index."""

    def __init__(self, folder: Path) -> None:
        from filelock import FileLock, Timeout

        self._timeout = Timeout
        self._lock = FileLock(str(folder / "index.lock"))

    def acquire(self, wait: float = 0.0) -> None:
        try:
            self._lock.acquire(timeout=wait)
        except self._timeout:
            raise IndexBusy(
                f"the index at {Path(self._lock.lock_file).parent} is open in another process "
                "(a running server?); stop it or use the HTTP API"
            ) from None

    def release(self) -> None:
        self._lock.release()

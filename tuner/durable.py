"""Crash-safe file writes: fsync a path or a whole folder, and replace a file atomically (temp
file, fsync, rename, fsync of the folder), also streamed line by line.

Used wherever ragtune writes a file that must never be seen half-written: the tuner (job files,
checkpoints, the adapter registry, prepared data), the service (eval run files) and eval
(reports, run results, downloaded datasets). It lives in the tuner, the lowest package that
writes such files. Knows nothing of what is written or who writes it."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path


def fsync(path: Path) -> None:
    """Flush a file's or a folder's entry to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Everything under ``folder``, files before the folders holding them, then ``folder``."""
    for p in sorted(folder.rglob("*"), reverse=True):
        fsync(p)
    fsync(folder)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so a crash leaves the old file or the new one, never half."""
    atomic_write_lines(path, (text,))


def atomic_write_lines(path: Path, lines: Iterable[str]) -> None:
    """Replace ``path`` with ``lines`` written one after another (streamed, never all in
    memory). A crash, or an exception raised while ``lines`` is read, leaves the old file or
    none; the temp file is removed."""
    tmp = path.with_name(
        f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}-{uuid.uuid4().hex[:8]}"
    )
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for line in lines:
                f.write(line)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync(path.parent)


def sqlite_wal(db: sqlite3.Connection, timeout: float = 30.0) -> None:
    """Put the file in WAL mode. Two processes opening a new file at once (replicas starting
    together over one data dir) can get "database is locked" at once from this pragma, without
    SQLite's busy wait, so it is retried."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)

"""The answer log: what each answer was given and what it said, kept so users can rate it.

Every answer the pipeline submits gets an id (``new_id``), and when its generation finishes
``AnswerLog.add`` queues a record: the surface and mode, the adapter, the user's messages, the
passages the prompt held (document id, chunk, span and a SHA-256 of the passage text, which
later tells whether the document still says it), the SHA-256 of the templated prompt, the
answer text and how it ended. The engine's thread only queues; one writer thread inserts into
``DATA_DIR/answers.sqlite`` (WAL) and drops records older than ``retention_days`` (0 keeps
them all). Requests' API keys never reach it: an answer's record holds what was asked, not who
asked; a rating holds the name of the key that gave it (one rating per answer and key).
Knows nothing of HTTP or the engine's scheduling.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

from tuner.durable import sqlite_wal

log = logging.getLogger(__name__)

PURGE_EVERY_S = 3600.0  # the writer drops expired records at start and then this often
SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    surface TEXT NOT NULL,
    mode TEXT NOT NULL,
    adapter TEXT,
    messages TEXT NOT NULL,
    passages TEXT NOT NULL,
    prompt_sha256 TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    answer TEXT NOT NULL,
    finish_reason TEXT
);
CREATE INDEX IF NOT EXISTS answers_created ON answers (created);
CREATE TABLE IF NOT EXISTS feedback (
    answer_id TEXT NOT NULL,
    key_name TEXT NOT NULL,
    rating TEXT NOT NULL,
    correction TEXT,
    comment TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (answer_id, key_name)
);
CREATE INDEX IF NOT EXISTS feedback_updated ON feedback (updated);
"""
FEEDBACK = ("answer_id", "key_name", "rating", "correction", "comment", "created", "updated")
COLUMNS = (
    "id", "created", "surface", "mode", "adapter", "messages", "passages", "prompt_sha256",
    "prompt_tokens", "answer", "finish_reason",
)  # fmt: skip
JSON_COLUMNS = ("messages", "passages")


def new_id() -> str:
    return f"ans-{uuid.uuid4().hex}"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def prompt_sha256(messages: list[dict[str, str]]) -> str:
    """The templated prompt's hash: its messages as canonical JSON."""
    return sha256(json.dumps(messages, ensure_ascii=False, sort_keys=True))


def record(row: Sequence[Any]) -> dict[str, Any]:
    """An ``answers`` row (its ``COLUMNS`` in order) as a record, messages and passages parsed."""
    out = dict(zip(COLUMNS, row, strict=True))
    for c in JSON_COLUMNS:
        out[c] = json.loads(out[c])
    return out


class AnswerLog:
    """Records of finished answers in one SQLite file, written by one thread."""

    def __init__(self, path: Path, retention_days: int = 30) -> None:
        if retention_days < 0:
            raise ValueError(f"retention_days must be >= 0, got {retention_days}")
        self.path, self.retention_days = path, retention_days
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            db.executescript(SCHEMA)
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="ragtune-answer-log", daemon=True)
        self._thread.start()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        sqlite_wal(db)
        return db

    # ---- writing ----------------------------------------------------------------------------
    def add(self, record: dict[str, Any]) -> None:
        """Queue ``record`` (its keys are ``COLUMNS``; messages and passages as lists)."""
        self._queue.put(record)

    def flush(self, timeout: float = 10.0) -> None:
        """Return once every record queued before this call is written; ``TimeoutError`` when
        the writer has not got there within ``timeout`` seconds."""
        reached = threading.Event()
        self._queue.put(reached)  # type: ignore[arg-type]
        if not reached.wait(timeout):
            raise TimeoutError("the answer log's writer is behind or stopped")

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        with closing(self._connect()) as db:
            purged = float("-inf")  # at start, then every PURGE_EVERY_S
            while True:
                if time.monotonic() - purged > PURGE_EVERY_S:
                    purged = time.monotonic()
                    try:
                        self._purge(db)
                    except Exception:  # noqa: BLE001 - tried again within the hour
                        log.exception("the answer log could not drop expired records")
                try:
                    record = self._queue.get(timeout=60)
                except queue.Empty:
                    continue
                if record is None:
                    return
                if isinstance(record, threading.Event):  # a flush marker
                    record.set()
                    continue
                try:
                    self._insert(db, record)
                except Exception:  # noqa: BLE001 - one bad record never stops the log
                    log.exception("an answer record could not be written")

    def _insert(self, db: sqlite3.Connection, record: dict[str, Any]) -> None:
        row = [
            json.dumps(record[c], ensure_ascii=False) if c in JSON_COLUMNS else record.get(c)
            for c in COLUMNS
        ]
        with db:
            db.execute(
                f"INSERT OR REPLACE INTO answers ({', '.join(COLUMNS)}) "
                f"VALUES ({', '.join('?' for _ in COLUMNS)})",
                row,
            )

    def _purge(self, db: sqlite3.Connection) -> int:
        if not self.retention_days:
            return 0
        cutoff = time.time() - self.retention_days * 86400
        with db:
            gone = db.execute("DELETE FROM answers WHERE created < ?", (cutoff,)).rowcount
            db.execute("DELETE FROM feedback WHERE updated < ?", (cutoff,))
        if gone:
            log.info("answer log: %d records older than %d days dropped", gone, self.retention_days)
        return int(gone)

    def purge(self) -> int:
        """Drop the records older than the retention now; returns how many went."""
        with closing(self._connect()) as db:
            return self._purge(db)

    # ---- reading ----------------------------------------------------------------------------
    def get(self, answer_id: str) -> dict[str, Any] | None:
        with closing(self._connect()) as db:
            row = db.execute(
                f"SELECT {', '.join(COLUMNS)} FROM answers WHERE id = ?", (answer_id,)
            ).fetchone()
        return None if row is None else record(row)

    # ---- feedback ---------------------------------------------------------------------------
    def rate(
        self,
        answer_id: str,
        key_name: str,
        rating: str,
        correction: str | None = None,
        comment: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Record (or replace) ``key_name``'s rating of ``answer_id``; (the feedback, created).
        ``LookupError`` when no record of the answer is kept (unknown, or past retention)."""
        now = time.time()
        with closing(self._connect()) as db, db:
            db.execute("BEGIN IMMEDIATE")  # the check and the write in one transaction
            if db.execute("SELECT 1 FROM answers WHERE id = ?", (answer_id,)).fetchone() is None:
                raise LookupError(answer_id)
            before = db.execute(
                "SELECT created FROM feedback WHERE answer_id = ? AND key_name = ?",
                (answer_id, key_name),
            ).fetchone()
            created = before[0] if before else now
            db.execute(
                f"INSERT OR REPLACE INTO feedback ({', '.join(FEEDBACK)}) VALUES (?,?,?,?,?,?,?)",
                (answer_id, key_name, rating, correction, comment, created, now),
            )
        row = dict(zip(FEEDBACK, (answer_id, key_name, rating, correction, comment, created, now),
                       strict=True))  # fmt: skip
        return row, before is None

    def feedback(
        self,
        *,
        rating: str | None = None,
        answer_id: str | None = None,
        key_name: str | None = None,
        since: float | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[int, list[dict[str, Any]]]:
        """(how many match, one page of them, newest first), each with its answer's record."""
        where, args = [], []
        for clause, value in (("f.rating = ?", rating), ("f.answer_id = ?", answer_id),
                              ("f.key_name = ?", key_name), ("f.updated >= ?", since)):  # fmt: skip
            if value is not None:
                where.append(clause)
                args.append(value)
        cond = f"WHERE {' AND '.join(where)}" if where else ""
        cols = ", ".join(f"f.{c}" for c in FEEDBACK) + ", " + ", ".join(f"a.{c}" for c in COLUMNS)
        with closing(self._connect()) as db:
            total = db.execute(f"SELECT COUNT(*) FROM feedback f {cond}", args).fetchone()[0]
            rows = db.execute(
                f"SELECT {cols} FROM feedback f LEFT JOIN answers a ON a.id = f.answer_id {cond} "
                "ORDER BY f.updated DESC, f.answer_id, f.key_name LIMIT ? OFFSET ?",
                [*args, limit, offset],
            ).fetchall()
        out = []
        for row in rows:
            item = dict(zip(FEEDBACK, row[: len(FEEDBACK)], strict=True))
            answer = row[len(FEEDBACK) :]
            item["answer"] = record(answer) if answer[0] is not None else None  # None: expired
            out.append(item)
        return int(total), out

    def count(self) -> int:
        with closing(self._connect()) as db:
            return int(db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

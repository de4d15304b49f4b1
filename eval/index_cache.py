"""The dataset's own index and one retrieval per question.

``fresh_index`` gives an index holding exactly a dataset's corpus, embedded and chunked as the
live index would be. It is kept between runs under ``DATA_DIR/evals/.indexes/`` (one folder per
dataset, embedder and retrieval settings, the ``KEPT_INDEXES`` most recently used) and brought up
to date first (``sync_corpus``): unchanged documents are not embedded again. ``search_all`` asks
an index every question once; ``read_retrieved`` reads the retrieval the service precomputed
from the live index (``retrieved.jsonl``). Either way the result is one ``Retrieved`` per
question, in order.

Knows nothing of generation, scoring or HTTP; the embedder, retrieval settings and reranker come
from the service's settings (``service.loading``, imported when used).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eval.config import EvalOptions
from eval.datasets.formats import DatasetError, EvalSet, Question
from retriever.index import DocumentIn, Hit, Retriever

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger(__name__)
KEPT_INDEXES = 3  # datasets whose index is kept between runs (the most recently used)


@dataclass
class Retrieved:
    """What retrieval found for one question, best first, and how long it took."""

    hits: list[Hit]
    seconds: float


@contextmanager
def fresh_index(
    evalset: EvalSet, settings: Settings, embedder_adapter: str | None, stage: dict
) -> Iterator[Retriever]:
    """An index holding exactly the dataset's corpus, embedded and chunked as the live index
    would be. It is kept between runs under ``DATA_DIR/evals/.indexes/`` (one folder per
    dataset, embedder and retrieval settings) and brought up to date first: unchanged documents
    are not embedded again, others are added, replaced or removed. When that folder is in use
    by another run, a temporary index is built instead."""
    from retriever.locks import IndexBusy
    from service.loading import index_embedder, retriever_config, tuned_embedder

    assert evalset.corpus is not None
    embedder = (
        tuned_embedder(embedder_adapter, settings) if embedder_adapter else index_embedder(settings)
    )
    config = retriever_config(settings)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ragtune-eval-") as tmp:
        try:
            index = Retriever(_cache_folder(evalset, embedder, config, settings), embedder, config)
        except IndexBusy:
            index = Retriever(Path(tmp) / "index", embedder, config)
        try:
            changed = sync_corpus(index, evalset)
            stage["index"] = time.perf_counter() - t0
            log.info(
                "index of %d documents (%d chunks) ready in %.1f s (%d documents written)",
                len(evalset.corpus),
                index.chunk_count,
                stage["index"],
                changed,
            )
            yield index
        finally:
            index.close()


def _cache_folder(evalset: EvalSet, embedder: Any, config: Any, settings: Settings) -> Path:
    import dataclasses
    import hashlib

    key = json.dumps(
        [str(Path(evalset.path).resolve()), embedder.identity, dataclasses.asdict(config)],
        sort_keys=True,
        default=str,
    )
    name = hashlib.sha256(key.encode()).hexdigest()[:16]
    root = settings.layout.eval_indexes
    prune_indexes(root, keep=KEPT_INDEXES - 1, spare=name)
    if (root / name).is_dir():
        os.utime(root / name)  # used now: the last to be pruned
    return root / name


def prune_indexes(root: Path, keep: int, spare: str) -> None:
    """Remove all but the ``keep`` most recently used kept indexes (never ``spare``, never one
    another run has open)."""
    import shutil

    from retriever.locks import FolderLock, IndexBusy

    if not root.is_dir():
        return
    others = [p for p in root.iterdir() if p.is_dir() and p.name != spare]
    others.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in others[keep:]:
        lock = FolderLock(old)
        try:
            lock.acquire()
        except IndexBusy:
            continue
        try:
            shutil.rmtree(old, ignore_errors=True)
        finally:
            lock.release()


def sync_corpus(index: Retriever, evalset: EvalSet) -> int:
    """Make ``index`` hold exactly the corpus; return how many documents were written."""
    assert evalset.corpus is not None
    wanted = {d.id for d in evalset.corpus}
    stale, offset = [], 0
    while batch := index.store.documents(offset=offset, limit=1000):
        stale += [row.id for row in batch if row.id not in wanted]
        offset += len(batch)
    if stale:
        index.delete(stale)
    docs = [DocumentIn(d.text, d.id, d.metadata) for d in evalset.corpus]
    written = len(stale)
    for i in range(0, len(docs), 256):
        results = index.upsert_many(docs[i : i + 256])
        written += sum(r.status != "unchanged" for r in results)
    return written


def search_all(
    index: Retriever,
    questions: Sequence[Question],
    options: EvalOptions,
    settings: Settings,
    stage: dict,
) -> list[Retrieved]:
    """Each question asked of ``index`` once (``options.depth`` passages, reranked as the
    service's settings say), timed one by one; the whole search goes into ``stage``."""
    from service.loading import reranker_from_settings

    reranker = reranker_from_settings(settings)
    t0 = time.perf_counter()
    found = []
    for q in questions:
        t = time.perf_counter()
        hits = index.search(q.text, k=options.depth, reranker=reranker)
        found.append(Retrieved(hits, time.perf_counter() - t))
    stage["retrieve"] = time.perf_counter() - t0
    return found


def read_retrieved(path: Path, n: int) -> list[Retrieved]:
    """``retrieved.jsonl`` as the service writes it: one row per question, in order."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]
    if len(rows) < n:
        raise DatasetError(f"{path}: {len(rows)} retrieval rows for {n} questions")
    return [
        Retrieved([Hit(**h) for h in r["hits"]], float(r.get("seconds", 0.0))) for r in rows[:n]
    ]

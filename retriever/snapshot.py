"""Vector-index snapshots: written atomically with a manifest, loaded and caught up from the log.

The manifest records the vector space (which embedder), the backend, and the last change applied;
loading replays the SQLite change log past it. If anything disagrees (missing file, other space,
ids that differ from SQLite's live chunks), the index is rebuilt from SQLite's vectors, which
are the truth. Knows nothing of search or documents beyond ids.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from retriever.store import Store
from retriever.vectors import FlatIndex, HNSWIndex, _atomic_write, load_index, make_index

log = logging.getLogger(__name__)
MANIFEST = "snapshot.json"


def write(
    folder: Path, index: FlatIndex | HNSWIndex, space: str, seq: int, identity: dict[str, Any]
) -> None:
    name = f"vectors-{space}-{index.kind}.faiss"
    index.save(folder / name)
    manifest = {
        "file": name,
        "space": space,
        "backend": index.kind,
        "last_change": seq,
        "count": len(index),
        "embedder": identity,
        "written": time.time(),
    }
    _atomic_write(folder / MANIFEST, json.dumps(manifest, indent=2).encode())
    for old in folder.glob("vectors-*.faiss"):
        if old.name != name:
            old.unlink(missing_ok=True)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    known = {"file", "space", "backend", "last_change", "count", "embedder", "written"}
    if set(data) - known:
        log.warning("snapshot manifest has unknown keys %s; ignoring them", set(data) - known)
    return data if isinstance(data, dict) else None


def load(folder: Path, store: Store, space: str, kind: str, dim: int) -> tuple[Any, int]:
    """The live vector index for ``space`` and the last change it reflects."""
    manifest = read_manifest(folder)
    if manifest and manifest.get("space") == space and manifest.get("backend") == kind:
        try:
            index = load_index(kind, folder / manifest["file"], dim)
            seq = _replay(index, store, space, int(manifest["last_change"]))
            if _consistent(index, store):
                return index, seq
            log.warning("snapshot disagrees with the store; rebuilding from SQLite")
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            log.warning("snapshot unreadable (%s); rebuilding from SQLite", exc)
    return rebuild(store, space, kind, dim), store.last_change()


def rebuild(store: Store, space: str, kind: str, dim: int) -> FlatIndex | HNSWIndex:
    index = make_index(kind, dim)
    ids, vectors = store.vectors(space)
    index.add(ids, vectors)
    return index


def _replay(index: FlatIndex | HNSWIndex, store: Store, space: str, after: int) -> int:
    added: set[int] = set()
    removed: set[int] = set()
    seq = after
    for change, op, cid in store.changes_after(after):
        seq = change
        if op == "add":
            added.add(cid)
        else:
            added.discard(cid)
            removed.add(cid)
    present = set(index.ids().tolist())
    index.remove(np.array(sorted(removed & present), dtype=np.int64))
    ids, vectors = store.vectors(space, sorted(added))
    index.add(ids, vectors)
    return seq


def _consistent(index: FlatIndex | HNSWIndex, store: Store) -> bool:
    live = store.live_ids()
    return len(index) == len(live) and bool(np.array_equal(np.sort(index.ids()), live))

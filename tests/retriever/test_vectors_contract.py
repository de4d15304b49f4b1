"""One contract for every vector-index backend (FAISS flat and HNSW, pgvector HNSW): stable ids,
deletes final, atomic save/load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retriever.vectors import BACKENDS, load_index, make_index
from tests.backends import new_schema, pg_url

DIM = 16


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class PgIndex:
    """pgvector behind the same protocol, for this contract: each id is a one-chunk document
    of its own in a ``PgStore`` schema, searched through its space's HNSW index; ``save`` is a
    no-op (every write is committed) and ``load`` opens the schema again."""

    SPACE = "contract"

    def __init__(self, schema: str, dim: int) -> None:
        from retriever.pgstore import PgStore

        self.store, self.dim = PgStore(pg_url(), schema, pool_size=2), dim
        self.store.set_meta("space", self.SPACE)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        from retriever.store import DocumentRow

        self.store._table(self.SPACE, self.dim)
        with self.store._pool.connection() as conn, conn.transaction():
            for cid, v in zip(ids.tolist(), vectors, strict=True):
                doc = DocumentRow(f"v{cid}", 1, "x", {}, "h", 0.0, 0.0)
                conn.execute(
                    "INSERT INTO documents VALUES (%s, %s, %s, '{}', %s, 0, 0)",
                    (doc.id, 1, doc.text, doc.hash),
                )
                conn.execute(
                    'INSERT INTO chunks (id, doc_id, ordinal, start, "end", text, hash, tsv) '
                    "VALUES (%s, %s, 0, 0, 1, 'x', 'h', ''::tsvector)",
                    (cid, doc.id),
                )
                conn.execute(f"INSERT INTO vec_{self.SPACE} VALUES (%s, 'h', %s)", (cid, v))

    def remove(self, ids: np.ndarray) -> None:
        self.store.delete([f"v{i}" for i in ids.tolist()])

    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        return self.store.dense_search(self.SPACE, query, k)

    def ids(self) -> np.ndarray:
        return self.store.vectors(self.SPACE)[0]

    def __len__(self) -> int:
        return self.store.count_vectors(self.SPACE)

    def save(self, path: Path) -> None:
        path.write_text(self.store.schema)  # where to open it again; the rows are committed


def _make(kind: str, dim: int) -> Any:
    return PgIndex(new_schema(), dim) if kind == "pgvector" else make_index(kind, dim)


def _load(kind: str, path: Path, dim: int) -> Any:
    if kind != "pgvector":
        return load_index(kind, path, dim)
    again = PgIndex(path.read_text(), dim)
    if again.store._dim(PgIndex.SPACE) != dim:
        raise ValueError(f"dimension {again.store._dim(PgIndex.SPACE)}, expected {dim}")
    return again


@pytest.fixture(params=[*sorted(BACKENDS), "pgvector"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_ids_are_stable_and_deletes_are_final(kind: str) -> None:
    rng = np.random.default_rng(0)
    index = _make(kind, DIM)
    vecs = _unit(rng, 200)
    ids = np.arange(1000, 1200, dtype=np.int64)  # not row positions
    index.add(ids, vecs)
    assert len(index) == 200
    assert index.search(vecs[17], 1)[0][0] == 1017
    index.remove(ids[:50])
    assert len(index) == 150
    for i in range(50):
        assert all(hit[0] >= 1050 for hit in index.search(vecs[i], 10))
    assert index.search(vecs[120], 1)[0][0] == 1120  # survivors keep their ids


def test_save_and_load_round_trip(kind: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    index = _make(kind, DIM)
    vecs = _unit(rng, 64)
    index.add(np.arange(64, dtype=np.int64) * 7, vecs)
    index.remove(np.array([0, 7], dtype=np.int64))
    path = tmp_path / "v.faiss"
    index.save(path)
    again = _load(kind, path, DIM)
    assert len(again) == 62
    assert sorted(again.ids().tolist()) == sorted(i * 7 for i in range(2, 64))
    assert again.search(vecs[5], 1)[0][0] == 35
    assert not list(tmp_path.glob("*.tmp-*"))
    with pytest.raises(ValueError, match="dimension"):
        _load(kind, path, DIM + 1)


def test_search_on_empty_and_k_larger_than_index(kind: str) -> None:
    index = _make(kind, DIM)
    assert index.search(np.ones(DIM, dtype=np.float32), 5) == []
    index.add(np.array([3], dtype=np.int64), _unit(np.random.default_rng(2), 1))
    assert [h[0] for h in index.search(np.ones(DIM, dtype=np.float32), 5)] == [3]


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="flat"):
        make_index("annoy", DIM)


def test_flat_compacts_tombstones_in_one_pass() -> None:
    from retriever.vectors import FlatIndex

    rng = np.random.default_rng(3)
    index = FlatIndex(DIM)
    vecs = _unit(rng, 600)
    index.add(np.arange(600, dtype=np.int64) + 10, vecs)
    index.remove(np.arange(10, 10 + FlatIndex.compact_at - 1, dtype=np.int64))
    assert index._index.ntotal == 600 and len(index) == 600 - FlatIndex.compact_at + 1
    assert index.search(vecs[0], 1)[0][0] != 10  # tombstoned, filtered at search time
    index.remove(np.array([600], dtype=np.int64))  # reaches compact_at: compacted for good
    assert index._index.ntotal == len(index) == 600 - FlatIndex.compact_at
    assert index.search(vecs[400], 1)[0][0] == 410
    assert sorted(index.ids().tolist()) == [i for i in range(10, 610) if i >= 10 + 255 and i != 600]


def test_ids_never_include_removed_ones(kind: str) -> None:
    index = _make(kind, DIM)
    index.add(np.arange(5, dtype=np.int64), _unit(np.random.default_rng(4), 5))
    index.remove(np.array([1, 3], dtype=np.int64))
    assert sorted(index.ids().tolist()) == [0, 2, 4] and len(index) == 3

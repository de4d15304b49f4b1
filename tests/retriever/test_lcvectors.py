"""A LangChain vector store as the embedded index's vector backend (``retriever.lcvectors``),
with langchain_core's ``InMemoryVectorStore`` registered as ``lc-memory``: the vector-backend
contract of ``test_vectors_contract``, and a ``Retriever`` on it through writes, deletes,
reopens, drift and a re-embedding."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import InMemoryVectorStore

from retriever.config import RetrieverConfig
from retriever.index import DocumentIn, Retriever
from retriever.lcvectors import SCORES, PassThrough, chunk_id, chunk_key, register_vectorstore
from retriever.vectors import BACKENDS, register_backend
from tests.fakes import FakeEmbedder

# the contract, collected again here with this module's ``kind``
from tests.retriever.test_vectors_contract import (  # noqa: F401
    test_ids_are_stable_and_deletes_are_final,
    test_ids_never_include_removed_ones,
    test_save_and_load_round_trip,
    test_search_on_empty_and_k_larger_than_index,
)

NAME = "lc-memory"


@pytest.fixture
def stores() -> Iterator[dict[int, InMemoryVectorStore]]:
    """``lc-memory`` registered for one test: one store per dimension, kept across opens as an
    external store would be."""
    held: dict[int, InMemoryVectorStore] = {}

    def factory(embeddings: Embeddings, dim: int) -> InMemoryVectorStore:
        if dim not in held:
            held[dim] = InMemoryVectorStore(embeddings)
        return held[dim]

    register_vectorstore(NAME, factory, lambda store: list(store.store))
    yield held
    BACKENDS.pop(NAME)


@pytest.fixture
def kind(stores: dict[int, InMemoryVectorStore]) -> str:
    return NAME


def _config(snapshot_every: int = 2000) -> RetrieverConfig:
    return RetrieverConfig(vector_index=NAME, snapshot_every=snapshot_every)


def _held(stores: dict[int, InMemoryVectorStore], dim: int = 64) -> list[int]:
    return sorted(chunk_id(key) for key in stores[dim].store)


def _dense_docs(r: Retriever, query: str) -> list[str]:
    return [h.doc_id for h in r.search(query, k=50, mode="dense")]


def test_writes_and_deletes_reach_the_store(
    stores: dict[int, InMemoryVectorStore], tmp_path: Path
) -> None:
    r = Retriever(tmp_path, FakeEmbedder(), _config())
    r.upsert_many([DocumentIn(f"document {i} token{i}", id=f"d{i}") for i in range(6)])
    r.upsert(DocumentIn("replaced words only here", id="d2"))
    r.delete(["d4"])
    live = r.store.live_ids().tolist()
    assert _held(stores) == live == sorted(r.index_ids().tolist())
    assert "d4" not in _dense_docs(r, "document 4 token4")
    assert all(h.text != "document 2 token2" for h in r.search("token2", k=50, mode="dense"))
    assert r.search("replaced words", k=1, mode="dense")[0].doc_id == "d2"
    r.close()


def test_scores_are_the_flat_index_inner_products(
    stores: dict[int, InMemoryVectorStore], tmp_path: Path
) -> None:
    docs = [DocumentIn(f"alpha beta {w} gamma", id=w) for w in ("one", "two", "three", "four")]
    lc = Retriever(tmp_path / "lc", FakeEmbedder(), _config())
    flat = Retriever(tmp_path / "flat", FakeEmbedder(), RetrieverConfig(vector_index="flat"))
    lc.upsert_many(docs)
    flat.upsert_many(docs)
    got = [(h.doc_id, h.score) for h in lc.search("alpha three", k=4, mode="dense")]
    want = [(h.doc_id, h.score) for h in flat.search("alpha three", k=4, mode="dense")]
    assert [d for d, _ in got][0] == "three" and {d for d, _ in got} == {d for d, _ in want}
    assert dict(got) == pytest.approx(dict(want), abs=1e-5)
    lc.close()
    flat.close()


def test_reopen_keeps_the_store_without_a_rebuild(
    stores: dict[int, InMemoryVectorStore], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    r = Retriever(tmp_path, FakeEmbedder(), _config())
    r.upsert_many([DocumentIn(f"text {i} word{i}", id=f"d{i}") for i in range(5)])
    r.close()
    before = dict(stores[64].store)
    with caplog.at_level(logging.WARNING, logger="retriever.snapshot"):
        again = Retriever(tmp_path, FakeEmbedder(), _config())
    assert not caplog.records  # the marker matched and the ids agreed: nothing rebuilt
    assert stores[64].store == before
    assert _dense_docs(again, "word3")[0] == "d3"
    again.close()


def test_a_write_the_store_missed_is_replayed_at_open(
    stores: dict[int, InMemoryVectorStore], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The store is not in SQLite's transaction: a crash after the commit leaves it behind, and
    the change log since the last snapshot catches it up."""
    r = Retriever(tmp_path, FakeEmbedder(), _config(snapshot_every=10_000))
    r.upsert_many([DocumentIn(f"text {i} word{i}", id=f"d{i}") for i in range(4)])
    r.snapshot()
    before, held = set(r.store.live_ids().tolist()), dict(stores[64].store)
    r.upsert(DocumentIn("late arrival wordlate", id="late"))
    r.delete(["d1"])
    after = set(r.store.live_ids().tolist())
    (added,), gone = after - before, before - after
    stores[64].delete([chunk_key(added)])  # the add that never reached the store
    stores[64].store.update({chunk_key(c): held[chunk_key(c)] for c in gone})  # nor the delete
    r.store.close()  # a crash: no snapshot, no clean close
    r._folder_lock.release()
    with caplog.at_level(logging.WARNING, logger="retriever.snapshot"):
        again = Retriever(tmp_path, FakeEmbedder(), _config())
    assert not caplog.records
    assert _held(stores) == again.store.live_ids().tolist()
    assert _dense_docs(again, "late arrival wordlate")[0] == "late"
    assert "d1" not in _dense_docs(again, "text 1 word1")
    again.close()


def test_drift_is_repaired_by_refilling_the_store(
    stores: dict[int, InMemoryVectorStore], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    r = Retriever(tmp_path, FakeEmbedder(), _config())
    r.upsert_many([DocumentIn(f"text {i} word{i}", id=f"d{i}") for i in range(5)])
    r.close()
    lost = _held(stores)[2]
    stores[64].delete([chunk_key(lost)])  # someone else's edit of the collection
    stores[64].add_texts(["stray"], ids=[chunk_key(10_000)])
    with caplog.at_level(logging.WARNING, logger="retriever.snapshot"):
        again = Retriever(tmp_path, FakeEmbedder(), _config())
    assert "rebuilding from SQLite" in caplog.text
    assert _held(stores) == again.store.live_ids().tolist()
    assert _dense_docs(again, "text 2 word2")[0] == "d2"
    again.close()


def test_a_foreign_id_in_the_store_fails_the_open_loudly(
    stores: dict[int, InMemoryVectorStore], tmp_path: Path
) -> None:
    Retriever(tmp_path, FakeEmbedder(), _config()).close()
    stores[64].add_texts(["not ours"], ids=["someone-elses-id"])
    with pytest.raises(ValueError, match="must hold this index alone"):
        Retriever(tmp_path, FakeEmbedder(), _config())
    assert "someone-elses-id" in stores[64].store  # nothing of it was deleted


def test_reindex_refills_the_store_in_the_new_space(
    stores: dict[int, InMemoryVectorStore], tmp_path: Path
) -> None:
    r = Retriever(tmp_path, FakeEmbedder(), _config())
    r.upsert_many([DocumentIn(f"text {i} word{i}", id=f"d{i}") for i in range(5)])
    assert r.reindex(FakeEmbedder(dim=32, name="other"))["switched"]
    assert _held(stores, 32) == r.store.live_ids().tolist()
    assert _dense_docs(r, "word4")[0] == "d4"
    r.close()


def test_unknown_backend_names_the_known_ones(stores: dict[int, InMemoryVectorStore]) -> None:
    with pytest.raises(ValueError, match=r"vector_index must be one of \['flat', 'hnsw', 'lc-"):
        RetrieverConfig(vector_index="qdrant")
    with pytest.raises(ValueError, match="built in"):
        register_backend("flat", BACKENDS[NAME])
    with pytest.raises(ValueError, match="backend name"):
        register_vectorstore("Qdrant Cloud", lambda e, d: InMemoryVectorStore(e), list)
    with pytest.raises(ValueError, match="score must be one of"):
        register_vectorstore("other", lambda e, d: InMemoryVectorStore(e), list, score="l1")


def test_a_store_opened_with_other_embeddings_is_refused(tmp_path: Path) -> None:
    class Echo(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return [[1.0] * 4 for _ in texts]

        def embed_query(self, text: str) -> list[float]:
            return [1.0] * 4

    backend = register_vectorstore("lc-wrong", lambda e, d: InMemoryVectorStore(Echo()), list)
    try:
        with pytest.raises(TypeError, match="PassThrough"):
            backend(4)
    finally:
        BACKENDS.pop("lc-wrong")


def test_distance_conversions_give_the_inner_product() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 8))
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    dot, dist = float(a @ b), float(np.linalg.norm(a - b))
    assert SCORES["similarity"](dot) == pytest.approx(dot)
    assert SCORES["cosine_distance"](1 - dot) == pytest.approx(dot)
    assert SCORES["euclidean"](dist) == pytest.approx(dot)
    assert SCORES["squared_euclidean"](dist**2) == pytest.approx(dot)


def test_chunk_keys_round_trip_and_pass_through_probes() -> None:
    assert chunk_key(7) == "00000000-0000-0000-0000-000000000007"
    assert chunk_id(chunk_key(2**62 + 5)) == 2**62 + 5
    with pytest.raises(ValueError, match="not a ragtune chunk id"):
        chunk_id("ffffffff-ffff-ffff-ffff-ffffffffffff")
    probe = PassThrough(3)
    assert probe.embed_documents(["dummy_text"]) == [[0.0, 0.0, 0.0]]
    with probe.staged(["7"], np.array([[1.0, 0.0, 0.0]], dtype=np.float32)):
        assert probe.embed_documents(["7"]) == [[1.0, 0.0, 0.0]]
    with pytest.raises(NotImplementedError):
        probe.embed_query("text")

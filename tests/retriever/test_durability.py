"""Snapshots, replay of the change log, re-embedding with zero downtime, one process per index."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from retriever.config import RetrieverConfig
from retriever.index import DocumentIn, Retriever, stored_identity
from retriever.locks import IndexBusy
from tests.backends import IndexPlace
from tests.fakes import FakeEmbedder


def _crash(r: Retriever) -> None:
    """Drop the retriever as a killed process would: no snapshot, no clean close."""
    r.store.close()
    r._folder_lock.release()


def _consistent(r: Retriever) -> None:
    assert np.array_equal(np.sort(r.index_ids()), r.store.live_ids())


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_snapshot_plus_change_log_restores_after_a_crash(tmp_path: Path, kind: str) -> None:
    config = RetrieverConfig(vector_index=kind, snapshot_every=10_000)
    r = Retriever(tmp_path, FakeEmbedder(), config)
    for i in range(20):
        r.upsert(DocumentIn(f"document {i} token{i}", id=f"d{i}"))
    r.snapshot()
    snap = json.loads((tmp_path / "snapshot.json").read_text())
    r.delete([f"d{i}" for i in range(5)])
    r.upsert(DocumentIn("replaced text tokenz", id="d7"))
    r.upsert(DocumentIn("brand new tokennew", id="new"))
    assert r.store.last_change() > snap["last_change"]
    _crash(r)
    again = Retriever(tmp_path, FakeEmbedder(), config)
    assert len(again) == 16 and again.get("d7").text == "replaced text tokenz"
    assert not again.search("token3", k=5, mode="dense") or all(
        h.doc_id != "d3" for h in again.search("token3", k=20, mode="dense")
    )
    assert again.search("tokennew", k=1, mode="dense")[0].doc_id == "new"
    _consistent(again)


def test_a_corrupt_snapshot_is_rebuilt_from_sqlite(tmp_path: Path) -> None:
    r = Retriever(tmp_path, FakeEmbedder())
    r.upsert(DocumentIn("alpha beta", id="a"))
    r.close()
    snap = json.loads((tmp_path / "snapshot.json").read_text())
    (tmp_path / snap["file"]).write_bytes(b"garbage")
    again = Retriever(tmp_path, FakeEmbedder())
    assert again.search("alpha", k=1, mode="dense")[0].doc_id == "a"
    _consistent(again)


def test_second_open_of_the_same_index_is_refused(tmp_path: Path) -> None:
    first = Retriever(tmp_path, FakeEmbedder())
    with pytest.raises(IndexBusy, match="another process"):
        Retriever(tmp_path, FakeEmbedder())
    first.close()
    Retriever(tmp_path, FakeEmbedder()).close()


def test_reindex_switches_atomically_while_searches_and_writes_continue(place: IndexPlace) -> None:
    old, new = FakeEmbedder(dim=128, name="old"), FakeEmbedder(dim=256, name="new")
    r = place.open(old)
    for i in range(300):
        r.upsert(DocumentIn(f"doc {i} word{i}", id=f"d{i}"))
    stop, errors, served = threading.Event(), [], [0]

    def searcher() -> None:
        while not stop.is_set():
            try:
                hits = r.search("doc 7 word7", k=3, mode="dense")
                assert hits and hits[0].doc_id == "d7"
                served[0] += 1
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                errors.append(repr(exc))

    def writer() -> None:
        for i in range(40):  # two own tokens: one alone can share a hash bucket with another's
            r.upsert(DocumentIn(f"written during reindex late{i} marker{i}", id=f"late{i}"))
        r.delete(["d0"])

    threads = [threading.Thread(target=searcher), threading.Thread(target=writer)]
    for t in threads:
        t.start()
    result = r.reindex(new, batch=32)
    threads[1].join()
    stop.set()
    threads[0].join()
    assert errors == [] and served[0] > 0
    assert result["switched"] and r.embedder is new
    assert (
        r.search("written during reindex late39 marker39", k=1, mode="dense")[0].doc_id == "late39"
    )
    assert all(h.doc_id != "d0" for h in r.search("word0", k=10, mode="dense"))
    _consistent(r)
    r.close()
    if place.backend == "sqlite":
        assert stored_identity(place.folder) == new.identity
    with pytest.raises(Exception, match="reindex"):
        place.open(FakeEmbedder(dim=128, name="old"))
    reopened = place.open(FakeEmbedder(dim=256, name="new"))
    assert reopened.store.get_meta("previous_space")  # old vectors kept for rollback
    assert (
        reopened.search("written during reindex late5 marker5", k=1, mode="dense")[0].doc_id
        == "late5"
    )
    reopened.close()


def test_switches_keep_only_the_current_and_the_previous_space(place: IndexPlace) -> None:
    r = place.open(FakeEmbedder(dim=32, name="a"))
    r.upsert_many([DocumentIn(f"doc {i}", id=f"d{i}") for i in range(5)])
    first = r.space
    r.reindex(FakeEmbedder(dim=48, name="b"))
    assert len(r.store.spaces()) == 2 and first in r.store.spaces()
    second = r.space
    r.reindex(FakeEmbedder(dim=40, name="c"))
    assert sorted(r.store.spaces()) == sorted([second, r.space])  # a's vectors are gone
    back = FakeEmbedder(dim=48, name="b")
    r.reindex(back)  # the rollback: b's vectors were kept, nothing to re-embed
    assert r.embedder is back and back.texts_embedded == 0
    assert r.search("doc 3", k=1, mode="dense")[0].doc_id == "d3"
    r.close()


@pytest.mark.parametrize("durability,level", [("process", 1), ("power", 2)])
def test_durability_sets_sqlite_synchronous(tmp_path: Path, durability: str, level: int) -> None:
    r = Retriever(tmp_path, FakeEmbedder(), RetrieverConfig(durability=durability))
    assert r.store._db.execute("PRAGMA synchronous").fetchone()[0] == level
    assert r.store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    r.close()
    with pytest.raises(ValueError, match="durability"):
        RetrieverConfig(durability="maybe")


def test_a_foreign_or_other_schema_sqlite_file_is_refused(tmp_path: Path) -> None:
    import sqlite3

    from retriever.store import Store

    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(ValueError, match="not a ragtune store"):
        Store(other)
    Store(tmp_path / "ok.sqlite").close()
    db = sqlite3.connect(tmp_path / "ok.sqlite")
    db.execute("UPDATE meta SET value='99' WHERE key='schema'")
    db.commit()
    with pytest.raises(ValueError, match="schema 99"):
        Store(tmp_path / "ok.sqlite")


def test_a_switch_by_one_process_reaches_another_within_two_seconds(pg_url: str) -> None:
    """Two retrievers over one PostgreSQL schema (as two replicas): a re-embedding switched by
    one is taken up by the other over LISTEN/NOTIFY, its searches in the new space."""
    from retriever.postgres import PgRetriever
    from tests.backends import new_schema

    schema = new_schema()
    new = FakeEmbedder(dim=48, name="new")
    loads: list[dict] = []

    def embedder_for(identity: dict) -> FakeEmbedder:
        loads.append(identity)
        return FakeEmbedder(dim=48, name="new")

    a = PgRetriever(pg_url, FakeEmbedder(dim=32, name="old"), schema=schema)
    b = PgRetriever(
        pg_url, FakeEmbedder(dim=32, name="old"), schema=schema, embedder_for=embedder_for
    )
    try:
        a.upsert_many([DocumentIn(f"doc {i} word{i}", id=f"d{i}") for i in range(20)])
        assert b.search("doc 4 word4", k=1, mode="dense")[0].doc_id == "d4"  # a's write, at once
        assert a.reindex(new)["switched"]
        deadline = time.monotonic() + 2.0
        while b.space != a.space and time.monotonic() < deadline:
            time.sleep(0.02)
        assert b.space == a.space and loads == [new.identity]
        assert b.embedder.dim == 48
        b.upsert(DocumentIn("written through b after the switch", id="late"))
        assert a.search("written through b after the switch", k=1, mode="dense")[0].doc_id == "late"
        a.delete(["d4"])
        assert all(h.doc_id != "d4" for h in b.search("doc 4 word4", k=5))
    finally:
        a.close()
        b.close()


def test_a_write_embedded_for_a_space_switched_meanwhile_is_written_again(pg_url: str) -> None:
    """A process that has not yet heard of a switch writes into the new space all the same."""
    from retriever.postgres import PgRetriever
    from tests.backends import new_schema

    schema = new_schema()
    a = PgRetriever(pg_url, FakeEmbedder(dim=32, name="old"), schema=schema)
    b = PgRetriever(
        pg_url,
        FakeEmbedder(dim=32, name="old"),
        schema=schema,
        embedder_for=lambda identity: FakeEmbedder(dim=48, name="new"),
    )
    try:
        a.upsert(DocumentIn("first doc", id="x"))
        b._closed.set()  # b stops listening: it learns of the switch only from its write
        b._follower.join()
        a.reindex(FakeEmbedder(dim=48, name="new"))
        assert b.space != a.space
        b.upsert(DocumentIn("a text b writes after the switch", id="y"))
        assert b.space == a.space
        assert a.search("a text b writes after the switch", k=1, mode="dense")[0].doc_id == "y"
    finally:
        a.close()
        b.close()


def test_the_service_opens_the_postgres_index_when_a_database_url_is_set(
    pg_url: str, tiny_st: Path
) -> None:
    from retriever.postgres import PgRetriever
    from service.loading import open_retriever
    from service.settings import Settings
    from tests.backends import new_schema

    settings = Settings(
        embedder=str(tiny_st), database={"url": pg_url, "schema_name": new_schema()}
    )
    r = open_retriever(settings)
    try:
        assert isinstance(r, PgRetriever) and r.schema == settings.database.schema_name
        r.upsert(DocumentIn("apt installs packages", id="a"))
        assert r.search("apt", k=1)[0].doc_id == "a"
        assert not settings.index_dir.exists() or not any(settings.index_dir.iterdir())
    finally:
        r.close()
    with pytest.raises(ValueError, match="schema_name"):
        Settings(database={"url": pg_url, "schema_name": "Bad-Name"})

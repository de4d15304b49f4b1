"""The live retriever: writes are visible at once, deletes are final, restarts lose nothing."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from retriever.config import RetrieverConfig
from retriever.errors import DocumentNotFound, EmbedderMismatch, InvalidDocument, InvalidSearch
from retriever.index import DocumentIn, Retriever
from tests.backends import IndexPlace
from tests.fakes import FakeEmbedder

MODES = ["dense", "sparse", "hybrid"]


@pytest.fixture
def r(place: IndexPlace) -> Iterator[Retriever]:
    """An empty index in each backend (sqlite, postgres)."""
    index = place.open(FakeEmbedder(), RetrieverConfig(chunk_size=200, chunk_overlap=20))
    yield index
    index.close()


@pytest.mark.parametrize("mode", MODES)
def test_added_document_is_found_and_deleted_one_never_is(r: Retriever, mode: str) -> None:
    r.upsert(DocumentIn("apt installs packages from the debian archive", id="apt"))
    r.upsert(DocumentIn("the kernel schedules processes on linux", id="kernel"))
    hits = r.search("apt packages", k=2, mode=mode)
    assert hits[0].doc_id == "apt" and hits[0].text.startswith("apt installs")
    r.delete(["apt"])
    assert all(h.doc_id != "apt" for h in r.search("apt packages", k=5, mode=mode))


def test_update_replaces_chunks_and_bumps_version(r: Retriever) -> None:
    assert r.upsert(DocumentIn("old text about zebras", id="d")).version == 1
    res = r.upsert(DocumentIn("new text about giraffes", id="d"))
    assert (res.status, res.version) == ("updated", 2)
    assert not r.search("zebras", k=5, mode="sparse")
    assert r.search("giraffes", k=5, mode="sparse")[0].doc_id == "d"
    assert r.chunk_count == 1


def test_unchanged_content_is_not_reembedded(place: IndexPlace) -> None:
    emb = FakeEmbedder()
    r = place.open(emb, RetrieverConfig(chunk_size=60, chunk_overlap=0))
    text = "first paragraph about apt.\n\nsecond paragraph about dpkg.\n\nthird about aptitude."
    r.upsert(DocumentIn(text, id="d"))
    embedded = emb.texts_embedded
    assert r.upsert(DocumentIn(text, id="d")).status == "unchanged"
    r.upsert(DocumentIn(text + "\n\nfourth about synaptic.", id="d"))
    assert emb.texts_embedded == embedded + 1  # only the new chunk


def test_citation_spans_point_into_the_document(r: Retriever) -> None:
    text = "。".join(f"第{i}句话讲的是软件包管理工具" for i in range(40))
    r.upsert(DocumentIn(text, id="zh"))
    hits = r.search("软件包管理", k=5, mode="sparse")
    assert hits  # the loop below checks nothing on no hits
    for hit in hits:
        assert text[hit.start : hit.end] == hit.text


def test_reopen_restores_everything(place: IndexPlace) -> None:
    r = place.open(FakeEmbedder())
    r.upsert(DocumentIn("persistent words here", id="a", metadata={"tags": ["x"]}))
    r.upsert(DocumentIn("gone soon", id="b"))
    r.delete(["b"])
    r.close()
    if place.backend == "sqlite":
        assert (place.folder / "snapshot.json").is_file()
    again = place.open(FakeEmbedder())
    assert len(again) == 1 and again.get("a").metadata == {"tags": ["x"]}
    assert again.search("persistent", k=3, mode="dense")[0].doc_id == "a"
    assert not again.search("gone soon", k=3, mode="sparse")


def test_other_embedder_is_refused(place: IndexPlace) -> None:
    place.open(FakeEmbedder(name="one")).close()
    with pytest.raises(EmbedderMismatch, match="reindex"):
        place.open(FakeEmbedder(name="two"))


def test_filters(r: Retriever) -> None:
    r.upsert(DocumentIn("apt guide", id="a", metadata={"source": "faq", "tags": ["apt"]}))
    r.upsert(DocumentIn("apt manual", id="b", metadata={"source": "ref"}))
    assert [h.doc_id for h in r.search("apt", 5, "sparse", {"source": "ref"})] == ["b"]
    assert [h.doc_id for h in r.search("apt", 5, "dense", {"tags": "apt"})] == ["a"]


def test_bad_input_is_refused_and_nothing_is_lost(r: Retriever) -> None:
    r.upsert(DocumentIn("keep me", id="keep"))
    with pytest.raises(InvalidDocument):
        r.upsert(DocumentIn("   ", id="x"))
    with pytest.raises(InvalidDocument):
        r.upsert(DocumentIn("t", id="a\nb"))
    with pytest.raises(DocumentNotFound):
        r.delete(["keep", "missing"])
    assert r.get("keep").text == "keep me"
    with pytest.raises(ValueError, match="mode"):
        r.search("x", mode="fuzzy")


def test_searches_during_updates_never_see_half_a_document(r: Retriever) -> None:
    """A document always has 3 chunks; a concurrent search must see all of one version."""

    def text(v: int) -> str:
        return "\n\n".join(f"version{v} part{p} " + "filler words " * 12 for p in range(3))

    r.upsert(DocumentIn(text(0), id="d"))
    stop, bad = threading.Event(), []

    def reader() -> None:
        while not stop.is_set():
            hits = r.search("filler words", k=10, mode="sparse")
            versions = {h.text.split()[0] for h in hits}
            if len(hits) != 3 or len(versions) != 1:
                bad.append((len(hits), versions))

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for v in range(1, 30):
        r.upsert(DocumentIn(text(v), id="d"))
        assert r.search(f"version{v}", k=1, mode="sparse")[0].text.startswith(f"version{v}")
    stop.set()
    for t in threads:
        t.join()
    assert bad == []


class _Noise(FakeEmbedder):
    """Vectors that ignore the text: dense search is useless with it."""

    def encode(self, texts: list[str], **_: object) -> np.ndarray:
        rng = np.random.default_rng(len(texts) + self.calls)
        self.calls += 1
        out = rng.normal(size=(len(texts), self.dim)).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_fitted_dense_weights_follow_the_labels_and_stay_with_their_space(tmp_path: Path) -> None:
    r = Retriever(tmp_path, _Noise(dim=32, name="noise"))
    words = [f"term{i}" for i in range(600)]
    r.upsert_many(
        [DocumentIn(" ".join(words[i : i + 3]) + " 文档", id=f"d{i}") for i in range(0, 600, 3)]
    )
    labelled = [(f"{words[i]} {words[i + 1]}", f"d{i}") for i in range(0, 600, 3)]
    assert r.dense_weight_for("term0 term1") == 0.5
    report = r.fit_dense_weights(labelled, k=1, min_queries=5)
    fitted, recall = report["weights"]["en"], report["recall"]["en"]
    assert fitted < 0.5 and recall[str(fitted)] == 1.0 and recall["0.8"] < 1.0, report
    assert r.dense_weight_for("term3 term4") == fitted
    assert r.dense_weight_for("中文 问题") == 0.5  # too few zh labels: the default stays
    r.reindex(FakeEmbedder(dim=16, name="other"))
    assert r.dense_weight_for("term3 term4") == 0.5  # fitted for the old space only
    r.close()


def test_filters_never_raise_on_stored_values_of_any_type(r: Retriever) -> None:
    r.upsert(DocumentIn("apt installs packages", "a", {"tags": [["apt"]], "kind": "faq"}))
    r.upsert(DocumentIn("dpkg unpacks packages", "b", {"tags": ["dpkg"], "kind": {"x": 1}}))
    assert [h.doc_id for h in r.search("packages", 5, filters={"tags": "dpkg"})] == ["b"]
    assert [h.doc_id for h in r.search("packages", 5, filters={"kind": ["faq", 2]})] == ["a"]
    assert r.search("packages", 5, filters={"tags": ["apt"], "kind": None}) == []


@pytest.mark.parametrize(
    ("filters", "field"),
    [
        ({"tags": [["apt"]]}, "filters.tags[0]"),
        ({"tags": {"x": 1}}, "filters.tags"),
        ({f"k{i}": 1 for i in range(17)}, "filters"),
        ([1], "filters"),
    ],
)
def test_filters_that_are_not_scalars_are_refused_naming_the_field(
    r: Retriever, filters: object, field: str
) -> None:
    r.upsert(DocumentIn("apt installs packages", "a", {"tags": ["apt"]}))
    with pytest.raises(InvalidSearch, match=rf"^{re.escape(field)}: "):
        r.search("packages", 5, filters=filters)  # type: ignore[arg-type]


def test_document_list_filters_by_id_or_text_and_counts_what_matches(r: Retriever) -> None:
    r.upsert_many(
        [
            DocumentIn("Apt installs packages", id="tools/apt"),
            DocumentIn("the kernel schedules processes", id="kernel"),
            DocumentIn("grub boots the KERNEL", id="grub"),
            DocumentIn("a literal 100% match_here", id="odd"),
        ]
    )
    assert [d.id for d in r.documents(0, 10, "kernel")] == ["grub", "kernel"]  # id, text, case
    assert r.count_documents("kernel") == 2 and r.count_documents() == 4
    assert [d.id for d in r.documents(1, 10, "kernel")] == ["kernel"]  # paged within the match
    assert [d.id for d in r.documents(0, 10, "apt")] == ["tools/apt"]
    # % and _ are literal, never wildcards
    assert [d.id for d in r.documents(0, 10, "0% m")] == ["odd"]
    assert r.documents(0, 10, "h_r") == [] and r.count_documents("%") == 1
    assert r.documents(0, 10, "nowhere") == [] and r.count_documents("nowhere") == 0

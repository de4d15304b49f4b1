"""LangChain adapters: writes, deletes, filters and modes go through to the live retriever, and the
store and retriever compose as Runnables."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from pydantic import ValidationError

from retriever.config import RetrieverConfig
from retriever.index import Retriever
from retriever.langchain import (
    RAGTUNE_KEY,
    RagtuneEmbeddings,
    RagtuneRetriever,
    RagtuneVectorStore,
)
from tests.backends import IndexPlace
from tests.fakes import FakeEmbedder

MODES = ["dense", "sparse", "hybrid"]
TEXTS = [
    "apt installs packages from the debian archive",
    "the kernel schedules processes on linux",
    "systemd starts services at boot",
]
IDS = ["apt", "kernel", "systemd"]
METAS: list[dict[str, Any]] = [
    {"topic": "packages"},
    {"topic": "kernel"},
    {"topic": "boot", "tags": ["init", "svc"]},
]


def _retriever(folder: Path) -> Retriever:
    return Retriever(folder, FakeEmbedder(), RetrieverConfig(chunk_size=200, chunk_overlap=20))


@pytest.fixture
def store(place: IndexPlace) -> Iterator[RagtuneVectorStore]:
    """The three texts in a store over each backend (sqlite, postgres)."""
    s = RagtuneVectorStore(
        place.open(FakeEmbedder(), RetrieverConfig(chunk_size=200, chunk_overlap=20))
    )
    assert s.add_texts(TEXTS, METAS, ids=IDS) == IDS
    yield s
    s.retriever.close()


def _ids(docs: list[Document]) -> list[str]:
    return [d.id or "<no id>" for d in docs]


@pytest.mark.parametrize("mode", MODES)
def test_search_returns_the_stored_metadata_exactly(store: RagtuneVectorStore, mode: str) -> None:
    doc = store.similarity_search("apt packages", k=1, mode=mode)[0]
    assert doc.id == "apt" and doc.page_content == TEXTS[0]
    assert doc.metadata == {"topic": "packages"}


def test_user_keys_named_like_chunk_fields_are_kept(tmp_path: Path) -> None:
    s = RagtuneVectorStore(_retriever(tmp_path))
    meta = {"score": "A+", "start": "monday", "chunk_id": "c-7", "end": None}
    s.add_texts(["grades are posted on monday"], [meta], ids=["grades"])
    (doc, score), *_ = s.similarity_search_with_score("grades posted", k=1)
    assert doc.metadata == meta and isinstance(score, float)
    ranked = s.similarity_search("grades posted", k=1, chunk_info=True)[0].metadata
    assert {k: v for k, v in ranked.items() if k != RAGTUNE_KEY} == meta
    assert ranked[RAGTUNE_KEY]["score"] == pytest.approx(score)


def test_a_stored_ragtune_key_is_kept_and_only_shadowed_by_chunk_info(tmp_path: Path) -> None:
    s = RagtuneVectorStore(_retriever(tmp_path))
    s.add_texts(["grades are posted on monday"], [{RAGTUNE_KEY: "mine"}], ids=["g"])
    assert s.similarity_search("grades", k=1)[0].metadata == {RAGTUNE_KEY: "mine"}
    shadowed = s.similarity_search("grades", k=1, chunk_info=True)[0].metadata[RAGTUNE_KEY]
    assert set(shadowed) == {"chunk_id", "start", "end", "score"}
    assert s.get_by_ids(["g"])[0].metadata == {RAGTUNE_KEY: "mine"}


@pytest.mark.parametrize("mode", MODES)
def test_chunk_info_under_the_reserved_key(tmp_path: Path, mode: str) -> None:
    text = " ".join(f"word{i} apt packages" for i in range(40))  # several 200-char chunks
    s = RagtuneVectorStore(_retriever(tmp_path), chunk_info=True)
    s.add_texts([text], [{"topic": "packages"}], ids=["long"])
    docs = s.similarity_search("apt packages", k=3, mode=mode)
    assert len(docs) == 3 and len({d.metadata[RAGTUNE_KEY]["chunk_id"] for d in docs}) == 3
    for doc in docs:
        info = doc.metadata[RAGTUNE_KEY]
        assert set(doc.metadata) == {"topic", RAGTUNE_KEY}
        assert text[info["start"] : info["end"]] == doc.page_content
        assert isinstance(info["chunk_id"], int) and info["score"] > 0
    plain = s.similarity_search("apt packages", k=1, mode=mode, chunk_info=False)[0]
    assert plain.metadata == {"topic": "packages"}
    assert s.get_by_ids(["long"])[0].metadata == {"topic": "packages"}  # whole documents


@pytest.mark.parametrize("mode", MODES)
def test_deleted_text_is_never_returned(store: RagtuneVectorStore, mode: str) -> None:
    query = "apt packages debian"
    assert "apt" in _ids(store.similarity_search(query, k=5, mode=mode))
    assert store.delete(["apt"]) is True
    assert "apt" not in _ids(store.similarity_search(query, k=5, mode=mode))
    assert store.get_by_ids(["apt"]) == []
    assert len(store.retriever) == 2


def test_delete_skips_unknown_ids_and_refuses_delete_all(store: RagtuneVectorStore) -> None:
    assert store.delete(["apt", "nope", "apt"]) is True
    assert store.delete(["nope"]) is True
    assert store.delete([]) is True
    with pytest.raises(ValueError, match="ids=None"):
        store.delete()
    assert sorted(_ids(store.get_by_ids(IDS))) == ["kernel", "systemd"]


def test_add_documents_honours_document_ids(tmp_path: Path) -> None:
    s = RagtuneVectorStore(_retriever(tmp_path))
    docs = [
        Document(page_content="zebras graze on the savanna", id="z", metadata={"n": 1}),
        Document(page_content="giraffes eat acacia leaves"),
    ]
    ids = s.add_documents(docs)
    assert ids[0] == "z" and ids[1] and ids[1] != "z"
    got = s.get_by_ids(["z", "missing", ids[1]])
    assert {d.id: d.page_content for d in got} == {
        "z": docs[0].page_content,
        ids[1]: docs[1].page_content,
    }
    assert next(d for d in got if d.id == "z").metadata == {"n": 1}


def test_same_id_replaces_the_document(store: RagtuneVectorStore) -> None:
    store.add_texts(["giraffes eat acacia leaves"], ids=["apt"])
    assert store.similarity_search("debian archive", k=3, mode="sparse") == []
    assert _ids(store.similarity_search("giraffes", k=1, mode="sparse")) == ["apt"]
    assert len(store.retriever) == 3


def test_mismatched_lengths_write_nothing(tmp_path: Path) -> None:
    s = RagtuneVectorStore(_retriever(tmp_path))
    with pytest.raises(ValueError, match="metadatas"):
        s.add_texts(["a text", "b text"], [{"x": 1}])
    with pytest.raises(ValueError, match="ids"):
        s.add_texts(["a text", "b text"], ids=["a"])
    assert len(s.retriever) == 0


@pytest.mark.parametrize("mode", MODES)
def test_metadata_filter(store: RagtuneVectorStore, mode: str) -> None:
    docs = store.similarity_search("apt packages", k=3, filter={"topic": "kernel"}, mode=mode)
    assert _ids(docs) == ([] if mode == "sparse" else ["kernel"])  # sparse: no shared words
    by_tag = store.similarity_search("services boot", k=3, filter={"tags": "init"}, mode=mode)
    assert _ids(by_tag) == ["systemd"]


def test_unknown_search_kwarg_is_an_error(store: RagtuneVectorStore) -> None:
    with pytest.raises(TypeError, match="filters"):
        store.similarity_search("apt", filters={"topic": "kernel"})
    with pytest.raises(ValueError, match="mode"):
        store.similarity_search("apt", mode="fuzzy")


def test_mode_from_constructor_and_per_call(store: RagtuneVectorStore) -> None:
    sparse = RagtuneVectorStore(store.retriever, mode="sparse")
    assert sparse.similarity_search("unrelated words", k=3) == []
    assert len(sparse.similarity_search("unrelated words", k=3, mode="dense")) == 3
    with pytest.raises(ValueError, match="mode"):
        RagtuneVectorStore(store.retriever, mode="fuzzy")


def test_scores_and_relevance(store: RagtuneVectorStore) -> None:
    pairs = store.similarity_search_with_score(TEXTS[1], k=3, mode="dense")
    scores = [s for _, s in pairs]
    assert pairs[0][0].id == "kernel" and scores == sorted(scores, reverse=True)
    assert scores[0] == pytest.approx(1.0, abs=1e-5)  # cosine of identical bags of words
    for mode in MODES:
        rel = store.similarity_search_with_relevance_scores(TEXTS[1], k=3, mode=mode)
        assert rel[0][0].id == "kernel" and all(0.0 <= r <= 1.0 for _, r in rel)
    hybrid = store.similarity_search_with_relevance_scores(TEXTS[1], k=1)
    assert hybrid[0][1] == pytest.approx(1.0)  # first in both lists under RRF


def test_score_threshold_retriever(store: RagtuneVectorStore) -> None:
    r = store.as_retriever(
        search_type="similarity_score_threshold",
        search_kwargs={"k": 3, "score_threshold": 0.99, "mode": "dense"},
    )
    assert _ids(r.invoke(TEXTS[2])) == ["systemd"]


def test_as_retriever_invoke(store: RagtuneVectorStore) -> None:
    one = store.as_retriever(search_type="similarity", search_kwargs={"k": 1})
    assert _ids(one.invoke("apt packages")) == ["apt"]
    two = store.as_retriever(search_kwargs={"k": 2, "filter": {"topic": ["kernel", "boot"]}})
    assert sorted(_ids(two.invoke("linux kernel boot"))) == ["kernel", "systemd"]
    assert _ids(asyncio.run(one.ainvoke("systemd services"))) == ["systemd"]


def test_ragtune_retriever_invoke(store: RagtuneVectorStore) -> None:
    r = RagtuneRetriever(retriever=store.retriever, k=2, mode="sparse")
    assert _ids(r.invoke("kernel processes")) == ["kernel"]
    filtered = RagtuneRetriever(retriever=store.retriever, k=3, filters={"topic": "boot"})
    assert _ids(filtered.invoke("apt packages")) == ["systemd"]
    assert _ids(asyncio.run(r.ainvoke("apt debian"))) == ["apt"]
    with pytest.raises(ValidationError):
        RagtuneRetriever(retriever=store.retriever, mode="fuzzy")
    with pytest.raises(ValidationError):
        RagtuneRetriever(retriever=store.retriever, k=0)


def test_ragtune_retriever_per_call_arguments(store: RagtuneVectorStore) -> None:
    r = RagtuneRetriever(retriever=store.retriever, k=3, mode="dense")
    assert len(r.invoke("apt packages")) == 3
    assert _ids(r.invoke("apt packages", k=1)) == ["apt"]
    assert _ids(r.invoke("apt packages", mode="sparse")) == ["apt"]  # no other shared words
    assert _ids(r.invoke("apt packages", filters={"topic": "boot"})) == ["systemd"]
    (doc,) = r.invoke("apt packages", k=1, chunk_info=True)
    assert doc.metadata[RAGTUNE_KEY]["start"] == 0 and doc.metadata["topic"] == "packages"
    assert len(r.invoke("apt packages")) == 3  # the per-call k did not stick
    assert _ids(asyncio.run(r.ainvoke("kernel processes", k=1))) == ["kernel"]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="k must be"):
            r.invoke("apt", k=bad)
    with pytest.raises(ValueError, match="mode"):
        r.invoke("apt", mode="fuzzy")
    with pytest.raises(TypeError, match="filter"):
        r.invoke("apt", filter={"topic": "boot"})  # the store's name; the retriever's is filters


def test_async_methods_go_through_to_the_index(tmp_path: Path) -> None:
    s = RagtuneVectorStore(_retriever(tmp_path), mode="sparse")

    async def scenario() -> None:
        docs = [Document(page_content=t, metadata=m) for t, m in zip(TEXTS, METAS, strict=True)]
        assert await s.aadd_documents(docs, ids=IDS) == IDS
        assert _ids(await s.asimilarity_search("debian archive", k=2)) == ["apt"]
        (doc, score), *_ = await s.asimilarity_search_with_score("kernel", k=1, chunk_info=True)
        assert doc.id == "kernel" and doc.metadata[RAGTUNE_KEY]["score"] == score
        assert await s.adelete(["apt", "missing"]) is True
        assert await s.asimilarity_search("debian archive", k=2) == []
        got = await s.aget_by_ids(["systemd", "apt"])
        assert [(d.id, d.metadata) for d in got] == [("systemd", METAS[2])]

    asyncio.run(scenario())
    assert len(s.retriever) == 2


def _format(docs: list[Document]) -> str:
    return "\n".join(f"[{d.id}] {d.page_content}" for d in docs)


def test_composes_in_an_lcel_chain(store: RagtuneVectorStore) -> None:
    chain = store.as_retriever(search_kwargs={"k": 1}) | RunnableLambda(_format)
    assert chain.invoke("apt packages") == f"[apt] {TEXTS[0]}"
    retriever = RagtuneRetriever(retriever=store.retriever, k=1)
    prompt = {"context": retriever | _format, "question": RunnablePassthrough()} | RunnableLambda(
        lambda x: f"{x['context']}\nQ: {x['question']}"
    )
    assert prompt.invoke("kernel processes") == f"[kernel] {TEXTS[1]}\nQ: kernel processes"


def test_from_texts_with_ragtune_embeddings_persists(tmp_path: Path) -> None:
    emb = RagtuneEmbeddings(FakeEmbedder())
    s = RagtuneVectorStore.from_texts(TEXTS, emb, METAS, ids=IDS, folder=tmp_path, mode="dense")
    assert s.mode == "dense" and _ids(s.similarity_search("linux kernel", k=1)) == ["kernel"]
    s.retriever.close()
    assert len(Retriever(tmp_path, FakeEmbedder())) == 3


def test_from_documents_with_foreign_embeddings(tmp_path: Path) -> None:
    emb = DeterministicFakeEmbedding(size=32)
    docs = [Document(page_content=t, id=i) for t, i in zip(TEXTS, IDS, strict=True)]
    s = RagtuneVectorStore.from_documents(docs, emb, folder=tmp_path, mode="dense")
    assert s.embeddings is emb
    for text, doc_id in zip(TEXTS, IDS, strict=True):  # random vectors: only exact text matches
        assert _ids(s.similarity_search(text, k=1)) == [doc_id]
    (_, score), *_ = s.similarity_search_with_score(TEXTS[0], k=1)
    assert score == pytest.approx(1.0, abs=1e-5)  # rows were unit-normalised for the index


def test_from_texts_needs_a_folder() -> None:
    with pytest.raises(TypeError, match="folder"):
        RagtuneVectorStore.from_texts(TEXTS, RagtuneEmbeddings(FakeEmbedder()))


def test_embeddings_adapter_matches_the_engine_embedder(store: RagtuneVectorStore) -> None:
    emb = store.embeddings
    query = emb.embed_query("apt packages")
    assert len(query) == 64 and np.linalg.norm(query) == pytest.approx(1.0, abs=1e-6)
    assert emb.embed_documents(["apt packages", "kernel"])[0] == query
    assert emb.embed_documents([]) == []


def test_search_by_vector_and_mmr_say_why_not(store: RagtuneVectorStore) -> None:
    with pytest.raises(NotImplementedError, match="query text"):
        store.similarity_search_by_vector([0.0] * 64)
    with pytest.raises(NotImplementedError, match="MMR"):
        store.as_retriever(search_type="mmr").invoke("apt")

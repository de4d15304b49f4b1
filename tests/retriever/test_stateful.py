"""Hypothesis drives random add/update/delete/search against an in-memory model of the truth."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from retriever.config import RetrieverConfig
from retriever.index import DocumentIn, Retriever
from tests.backends import IndexPlace
from tests.fakes import FakeEmbedder

WORDS = st.lists(
    st.sampled_from(["apt", "dpkg", "kernel", "软件", "包管理", "network", "boot"]),
    min_size=1,
    max_size=8,
)


class RetrieverModel(RuleBasedStateMachine):
    ids = Bundle("ids")

    backend = "sqlite"

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="ragtune-stateful-"))
        self.place = IndexPlace(self.backend, self.folder)
        self.r = self._open()
        self.model: dict[str, str] = {}  # id -> unique token of its live text
        self.dead: set[str] = set()  # tokens of deleted or replaced texts
        self.n = 0

    def _token(self) -> str:
        self.n += 1
        return f"uniq{self.n}x"

    @rule(target=ids, words=WORDS)
    def add(self, words: list[str]) -> str:
        token = self._token()
        doc_id = f"d{self.n}"
        self.r.upsert(DocumentIn(" ".join([token, *words]), id=doc_id))
        self.model[doc_id] = token
        return doc_id

    @rule(doc_id=ids, words=WORDS)
    def update(self, doc_id: str, words: list[str]) -> None:
        if doc_id not in self.model:
            return
        token = self._token()
        self.r.upsert(DocumentIn(" ".join([*words, token]), id=doc_id))
        self.dead.add(self.model[doc_id])
        self.model[doc_id] = token

    @rule(doc_id=ids)
    def delete(self, doc_id: str) -> None:
        if doc_id not in self.model:
            return
        self.r.delete([doc_id])
        self.dead.add(self.model.pop(doc_id))

    def _open(self) -> Retriever:
        config = RetrieverConfig(chunk_size=60, chunk_overlap=10, snapshot_every=5)
        return self.place.open(FakeEmbedder(dim=64), config)

    @rule()
    def reopen(self) -> None:
        self.r.close()
        self.r = self._open()

    @invariant()
    def every_live_document_is_found_by_its_token(self) -> None:
        for doc_id, token in self.model.items():
            hits = self.r.search(token, k=3, mode="sparse")
            assert hits and hits[0].doc_id == doc_id, (doc_id, token, hits)

    @invariant()
    def no_dead_text_is_ever_returned(self) -> None:
        for token in self.dead:
            for mode in ("sparse", "hybrid"):
                assert all(token not in h.text for h in self.r.search(token, k=10, mode=mode))
        assert len(self.r) == len(self.model)

    def teardown(self) -> None:
        self.r.close()
        shutil.rmtree(self.folder, ignore_errors=True)


class PgRetrieverModel(RetrieverModel):
    """The same machine over PostgreSQL + pgvector (a schema of its own per example)."""

    backend = "postgres"


SETTINGS = settings(
    max_examples=25,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
RetrieverModel.TestCase.settings = SETTINGS
PgRetrieverModel.TestCase.settings = SETTINGS
TestRetrieverModel = RetrieverModel.TestCase
TestPgRetrieverModel = PgRetrieverModel.TestCase

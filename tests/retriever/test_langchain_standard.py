"""LangChain's own standard suites (``langchain-tests``) against ragtune's adapters: the
vector-store suite, sync and async, on ``RagtuneVectorStore`` with the suite's deterministic fake
``Embeddings``, and the retriever suite on ``RagtuneRetriever``, each over a real SQLite index in
a tmp dir and over PostgreSQL + pgvector (``pgserver``).

The async tests carry ``pytest.mark.asyncio`` (pytest-asyncio comes with langchain-tests and runs
in strict mode here); the mark is set on the classes, so the sync tests inherit it too and the
plugin's "not an async function" warning is filtered for them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.retrievers import BaseRetriever
from langchain_tests.integration_tests import (
    RetrieversIntegrationTests,
    VectorStoreIntegrationTests,
)

from retriever.config import RetrieverConfig
from retriever.index import DocumentIn
from retriever.langchain import LangChainEmbedder, RagtuneRetriever, RagtuneVectorStore
from tests.backends import IndexPlace
from tests.fakes import FakeEmbedder

_ASYNC = [
    pytest.mark.asyncio,
    pytest.mark.filterwarnings(
        "ignore:.*is marked with '@pytest.mark.asyncio':pytest.PytestWarning"
    ),
]


class TestRagtuneVectorStoreStandard(VectorStoreIntegrationTests):
    pytestmark = _ASYNC
    backend = "sqlite"

    @pytest.fixture
    def vectorstore(self, tmp_path: Path) -> Iterator[RagtuneVectorStore]:
        """An empty store in the default (hybrid) mode over an index opened with the suite's
        6-dimensional fake embeddings."""
        embedder = LangChainEmbedder(self.get_embeddings())
        store = RagtuneVectorStore(IndexPlace(self.backend, tmp_path / "index").open(embedder))
        try:
            yield store
        finally:
            store.retriever.close()


class TestPgRagtuneVectorStoreStandard(TestRagtuneVectorStoreStandard):
    """The same suite over PostgreSQL + pgvector."""

    backend = "postgres"


CORPUS = [
    "apt installs packages from the debian archive",
    "the kernel schedules processes on linux",
    "systemd starts services at boot",
    "dpkg unpacks a package file",
    "grub loads the kernel at boot",
]


class TestRagtuneRetrieverStandard(RetrieversIntegrationTests):
    pytestmark = _ASYNC
    backend = "sqlite"

    @pytest.fixture(autouse=True)
    def _index(self, tmp_path: Path) -> Iterator[None]:
        config = RetrieverConfig(chunk_size=200, chunk_overlap=20)
        self.index = IndexPlace(self.backend, tmp_path / "index").open(FakeEmbedder(), config)
        self.index.upsert_many([DocumentIn(text, id=f"d{i}") for i, text in enumerate(CORPUS)])
        try:
            yield
        finally:
            self.index.close()

    @property
    def retriever_constructor(self) -> type[BaseRetriever]:
        return RagtuneRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"retriever": self.index}

    @property
    def retriever_query_example(self) -> str:
        return "which package boots the kernel"


class TestPgRagtuneRetrieverStandard(TestRagtuneRetrieverStandard):
    """The same suite over PostgreSQL + pgvector."""

    backend = "postgres"

"""Two apps (as two replicas) over one PostgreSQL index: a write through one is found through
the other as soon as it returns, and a delete through either is honoured by both."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.backends import new_schema
from tests.helpers import tiny_loader


def _replica(tiny_llama: Path, tmp: Path, url: str, schema: str) -> TestClient:
    from retriever.postgres import PgRetriever

    base = tiny_loader(tiny_llama, tmp)

    def loader(state) -> None:  # noqa: ANN001 - service.app.AppState
        base(state)
        state.retriever.close()  # the embedded one tiny_loader opened: this replica uses PG
        state.retriever = PgRetriever(url, state.embedder, schema=schema)

    return TestClient(create_app(Settings(), loader=loader), base_url="http://127.0.0.1")


def test_writes_and_deletes_through_one_replica_are_seen_by_the_other(
    tiny_llama: Path, tmp_path: Path, pg_url: str
) -> None:
    schema = new_schema()
    with (
        _replica(tiny_llama, tmp_path / "a", pg_url, schema) as a,
        _replica(tiny_llama, tmp_path / "b", pg_url, schema) as b,
    ):
        doc = {"id": "apt-basics", "text": "apt install adds a package from the archive."}
        assert a.post("/v1/documents", json=doc).status_code == 201
        found = b.post("/v1/search", json={"query": "apt install", "mode": "hybrid"}).json()
        assert found["results"][0]["doc_id"] == "apt-basics"
        q = b.post("/v1/query", json={"question": "how to install?", "k": 2, "max_new_tokens": 2})
        assert [c["doc_id"] for c in q.json()["citations"]] == ["apt-basics"]
        assert b.get("/v1/documents/apt-basics").json()["version"] == 1
        assert b.delete("/v1/documents/apt-basics").status_code == 200
        for replica in (a, b):
            s = replica.post("/v1/search", json={"query": "apt install", "mode": "hybrid"}).json()
            assert s["results"] == []
            assert replica.get("/v1/documents/apt-basics").status_code == 404

"""The documents, search and query API on the real app with a tiny model and a fake embedder."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.helpers import tiny_loader


@pytest.fixture
def client(tiny_llama: Path, tmp_path: Path):
    with TestClient(
        create_app(Settings(), loader=tiny_loader(tiny_llama, tmp_path)),
        base_url="http://127.0.0.1",
        raise_server_exceptions=False,
    ) as c:
        yield c


def test_quickstart_flow(client: TestClient) -> None:
    added = client.post(
        "/v1/documents",
        json={
            "id": "apt-basics",
            "text": "To install a package on debian run apt install as root.",
        },
    )
    assert added.status_code == 201
    assert added.json()["documents"][0] == {
        "id": "apt-basics",
        "version": 1,
        "status": "added",
        "chunks": 1,
    }
    q = client.post(
        "/v1/query", json={"question": "how do I install a package ?", "k": 3, "max_new_tokens": 4}
    ).json()
    assert q["mode"] == "rag" and q["usage"]["completion_tokens"] == 4
    assert [c["doc_id"] for c in q["citations"]] == ["apt-basics"]
    assert q["citations"][0]["title"] == "" and q["citations"][0]["section"] == ""
    client.put(
        "/v1/documents/apt-basics",
        json={"text": "# Apt\n\n## Install\n\nrun apt install as root.", "metadata": {}},
    )
    found = client.post("/v1/search", json={"query": "apt install", "mode": "sparse"}).json()
    top = found["results"][0]
    assert (top["title"], top["section"], top["text"]) == (
        "Apt",
        "Install",
        "## Install\n\nrun apt install as root.",
    )
    assert client.delete("/v1/documents/apt-basics").status_code == 200
    s = client.post("/v1/search", json={"query": "install package", "mode": "sparse"}).json()
    assert s["results"] == []
    gone = client.get("/v1/documents/apt-basics")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "document_not_found"


def test_batch_list_get_put(client: TestClient) -> None:
    docs = [
        {"id": f"d{i}", "text": f"document number {i} about apt", "metadata": {"n": i}}
        for i in range(3)
    ]
    assert client.post("/v1/documents", json={"documents": docs}).status_code == 201
    listed = client.get("/v1/documents", params={"limit": 2}).json()
    assert listed["total"] == 3 and [d["id"] for d in listed["documents"]] == ["d0", "d1"]
    put = client.put("/v1/documents/d1", json={"text": "replaced text"}).json()
    assert (put["version"], put["status"]) == (2, "updated")
    assert client.get("/v1/documents/d1").json()["text"] == "replaced text"
    hits = client.post(
        "/v1/search", json={"query": "apt", "mode": "dense", "filters": {"n": 2}}
    ).json()["results"]
    assert [h["doc_id"] for h in hits] == ["d2"]


@pytest.mark.parametrize(
    "body,status,code",
    [
        ({"text": ""}, 422, "invalid_request"),
        ({"text": "x", "bogus": 1}, 422, "invalid_request"),
    ],
)
def test_bad_documents_get_the_error_shape(
    client: TestClient, body: dict, status: int, code: str
) -> None:
    r = client.post("/v1/documents", json=body)
    assert r.status_code == status and r.json()["error"]["code"] == code


def test_query_limits_and_modes(client: TestClient) -> None:
    too_many = client.post("/v1/query", json={"question": "q", "k": 1000})
    assert too_many.status_code == 422 and too_many.json()["error"]["code"] == "k_too_large"
    ft = client.post("/v1/query", json={"question": "q", "mode": "ft"})
    assert ft.status_code == 409 and "ragtune tune" in ft.json()["error"]["message"]
    base = client.post(
        "/v1/query", json={"question": "what is debian ?", "mode": "base", "max_new_tokens": 2}
    ).json()
    assert base["citations"] == [] and base["usage"]["completion_tokens"] == 2


def test_ids_with_slashes_work_in_paths(client: TestClient) -> None:
    client.post("/v1/documents", json={"id": "guides/zh/boot.txt", "text": "系统启动"})
    assert client.get("/v1/documents/guides/zh/boot.txt").json()["text"] == "系统启动"
    assert client.delete("/v1/documents/guides/zh/boot.txt").status_code == 200


def test_upload_files_names_never_become_paths(client: TestClient, tmp_path: Path) -> None:
    files = [
        ("files", ("../../etc/evil.txt", b"upload text about apt", "text/plain")),
        ("files", ("notes.md", b"# Notes\n\nsome notes", "text/markdown")),
        ("files", ("docs.jsonl", b'{"id": "j1", "text": "from jsonl"}\nbroken\n', "text/plain")),
        ("files", ("blob.bin", b"\x00\x01", "application/octet-stream")),
    ]
    r = client.post("/v1/documents/upload", files=files)
    assert r.status_code == 201, r.text
    body = r.json()
    assert sorted(d["id"] for d in body["documents"]) == ["evil.txt", "j1", "notes.md"]
    assert {f["source"] for f in body["failed"]} == {"docs.jsonl:2", "blob.bin"}
    assert client.get("/v1/documents/notes.md").json()["metadata"]["title"] == "Notes"
    assert not list(tmp_path.rglob("evil.txt"))


def test_a_crash_inside_a_request_is_a_500_without_internals(client: TestClient) -> None:
    retriever = client.app.state.ragtune.retriever  # type: ignore[attr-defined]
    original = retriever.search

    def boom(*_: object, **__: object) -> None:
        raise RuntimeError("secret internal detail /etc/passwd")

    retriever.search = boom
    try:
        r = client.post("/v1/search", json={"query": "x"})
    finally:
        retriever.search = original
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "internal_error" and "secret" not in r.text
    assert client.post("/v1/search", json={"query": "x"}).status_code == 200  # still serving

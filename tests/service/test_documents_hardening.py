"""/v1/documents at its bounds: each field at its bound and one past it (422 naming the field),
nothing stored lost by a refused write, and rows that break today's bounds (planted straight into
SQLite) still served by GET, list pages, search and query citations."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retriever.index import TEXT_MAX_CHARS
from retriever.store import RAW_METADATA_KEY
from retriever.validation import ID_MAX_CHARS, METADATA_MAX_DEPTH
from service.bounds import OFFSET_MAX, PAGE_MAX
from service.routes.documents import SEARCH_MAX_CHARS
from service.settings import Limits, Settings
from tests.helpers import app_clients, plant_row


@pytest.fixture
def client(tiny_llama: Path, tmp_path: Path) -> Iterator[Any]:
    with app_clients(tiny_llama, tmp_path) as make:
        yield make(Settings(limits=Limits(max_batch_documents=4)))


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def refused(response: Any, loc: list[Any], says: str = "") -> None:
    """A 422 in the app's error shape whose details name the field at ``loc``."""
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    found = [d for d in error["details"] if d["loc"] == loc]
    assert found, error["details"]
    assert says in found[0]["msg"], found[0]["msg"]


def test_document_fields_at_their_bound_and_one_past(client: Any) -> None:
    ok = client.post(
        "/v1/documents",
        json={"id": "x" * ID_MAX_CHARS, "text": "apt", "metadata": nested(METADATA_MAX_DEPTH)},
    )
    assert ok.status_code == 201, ok.text
    post = lambda body: client.post("/v1/documents", json=body)  # noqa: E731
    refused(post({"id": "x" * (ID_MAX_CHARS + 1), "text": "t"}), ["body", "document", "id"])
    refused(post({"id": "evil\u202eid", "text": "t"}), ["body", "document", "id"], "U+202E")
    refused(post({"id": "a\x00b", "text": "t"}), ["body", "document", "id"], "U+0000")
    refused(post({"text": "x" * (TEXT_MAX_CHARS + 1)}), ["body", "document", "text"])
    refused(post({"text": ""}), ["body", "document", "text"])
    deep = {"text": "t", "metadata": nested(300)}
    refused(post(deep), ["body", "document", "metadata"], "metadata" + ".a" * 8 + ": nested")
    refused(post({"text": "t", "metadata": {"n": 2**63}}), ["body", "document", "metadata"])
    batch = [{"id": f"d{i}", "text": "t"} for i in range(3)] + [
        {"id": "d3", "text": "t", "metadata": {"a": nested(9)}}
    ]
    refused(post({"documents": batch}), ["body", "batch", "documents", 3, "metadata"], "metadata.a")
    too_many = post({"documents": [{"text": f"t{i}"} for i in range(5)]})
    refused(too_many, ["body", "documents"], "at most 4")
    assert too_many.json()["error"]["code"] == "batch_too_large"
    assert client.get("/v1/documents").json()["total"] == 1  # nothing refused was written


def test_path_ids_and_pages_are_bounded(client: Any) -> None:
    client.post("/v1/documents", json={"id": "keep", "text": "kept text"})
    bad_put = client.put("/v1/documents/keep\u202e", json={"text": "new"})
    refused(bad_put, ["path", "doc_id"], "U+202E")
    refused(client.get("/v1/documents/" + "x" * (ID_MAX_CHARS + 1)), ["path", "doc_id"])
    assert client.get("/v1/documents/keep").json()["text"] == "kept text"
    assert client.get("/v1/documents", params={"offset": OFFSET_MAX}).json()["documents"] == []
    for name, value in [("offset", OFFSET_MAX + 1), ("offset", 10**20), ("offset", -1)]:
        refused(client.get("/v1/documents", params={name: value}), ["query", name])
    assert len(client.get("/v1/documents", params={"limit": PAGE_MAX}).json()["documents"]) == 1
    for value in (0, PAGE_MAX + 1):
        refused(client.get("/v1/documents", params={"limit": value}), ["query", "limit"])
    found = client.get("/v1/documents", params={"q": "KEPT"}).json()
    assert found["total"] == 1 and [d["id"] for d in found["documents"]] == ["keep"]
    assert client.get("/v1/documents", params={"q": "gone"}).json()["total"] == 0
    for value in ("", "x" * (SEARCH_MAX_CHARS + 1)):
        refused(client.get("/v1/documents", params={"q": value}), ["query", "q"])


def test_rows_stored_before_the_bounds_are_served_by_every_read(
    client: Any, tmp_path: Path
) -> None:
    for doc_id in ("deep", "list", "bidi"):
        r = client.post("/v1/documents", json={"id": doc_id, "text": f"debian apt {doc_id}"})
        assert r.status_code == 201
    deep = nested(300)
    deep["tag"] = "apt"
    plant_row(tmp_path / "index", "deep", json.dumps(deep))
    plant_row(tmp_path / "index", "list", "[1, 2]")
    plant_row(tmp_path / "index", "bidi", json.dumps({"tag": "apt"}), new_id="evil\u202ename")

    one = client.get("/v1/documents/deep")
    assert one.status_code == 200 and one.json()["metadata"]["tag"] == "apt"
    assert client.get("/v1/documents/list").json()["metadata"] == {RAW_METADATA_KEY: "[1, 2]"}
    assert client.get("/v1/documents/evil\u202ename").json()["metadata"] == {"tag": "apt"}
    page = client.get("/v1/documents")
    assert page.status_code == 200 and len(page.json()["documents"]) == 3
    found = client.post("/v1/search", json={"query": "debian apt", "k": 5})
    assert found.status_code == 200 and len(found.json()["results"]) == 3
    filtered = client.post("/v1/search", json={"query": "apt", "filters": {"tag": "apt"}})
    assert {h["doc_id"] for h in filtered.json()["results"]} == {"deep", "evil\u202ename"}
    answer = client.post(
        "/v1/query", json={"question": "debian apt", "mode": "rag", "k": 3, "max_new_tokens": 2}
    )
    assert answer.status_code == 200 and len(answer.json()["citations"]) == 3
    assert client.delete("/v1/documents/evil\u202ename").status_code == 200


def test_filters_that_are_not_scalars_are_a_422_naming_filters(client: Any) -> None:
    client.post("/v1/documents", json={"text": "apt kernel", "metadata": {"tags": ["apt"]}})
    for body in (
        {"query": "apt", "filters": {"tags": [["apt"]]}},
        {"query": "apt", "filters": {"tags": {"a": 1}}},
    ):
        r = client.post("/v1/search", json=body)
        assert r.status_code == 422 and "filters" in r.text, r.text


def test_uploaded_jsonl_splits_on_newline_and_names_each_refused_line(client: Any) -> None:
    rows = [
        {"id": "sep", "text": "one\u2028record"},
        {"id": "bad\u202eid", "text": "bidi"},
        {"id": "deep", "text": "t", "metadata": nested(20)},
    ]
    raw = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\nnot json\n"
    files = [("files", ("docs.jsonl", raw.encode(), "application/octet-stream"))]
    r = client.post("/v1/documents/upload", files=files)
    assert r.status_code == 201, r.text
    assert [d["id"] for d in r.json()["documents"]] == ["sep"]
    assert client.get("/v1/documents/sep").json()["text"] == "one\u2028record"
    failed = {f["source"].split(" ")[0]: f["reason"] for f in r.json()["failed"]}
    assert sorted(failed) == ["docs.jsonl:2", "docs.jsonl:3", "docs.jsonl:4"]
    assert failed["docs.jsonl:2"].startswith("id: control, format or bidi")
    assert "nested deeper" in failed["docs.jsonl:3"]


def test_training_uploads_split_on_newline_and_list_every_bad_line(client: Any) -> None:
    chat = {
        "messages": [
            {"role": "user", "content": "q\u2028q"},
            {"role": "assistant", "content": "a\x85"},
        ]
    }
    good = (json.dumps(chat, ensure_ascii=False) + "\r\n").encode() * 2
    up = lambda raw: client.post("/v1/files", files={"file": ("t.jsonl", raw)})  # noqa: E731
    r = up(good)
    assert r.status_code == 201 and r.json()["lines"] == 2, r.text
    bad = good + b"{not json\n" + b"\xff\n" + b"[1]\n" + b'{"prompt": "p", "completion": "c"}\n'
    r = up(bad)
    assert r.status_code == 422 and r.json()["error"]["message"].startswith(
        "t.jsonl: line 3: not JSON"
    )
    assert [(d["file"], d["line"]) for d in r.json()["error"]["details"]] == [
        ("t.jsonl", 3),
        ("t.jsonl", 4),
        ("t.jsonl", 5),
        ("t.jsonl", 6),
    ]


def test_put_updates_a_stored_id_the_newer_rules_refuse_and_refuses_a_new_one(
    client: Any, tmp_path: Path
) -> None:
    for doc_id in ("nbsp", "dots"):
        assert client.post("/v1/documents", json={"id": doc_id, "text": "old"}).status_code == 201
    plant_row(tmp_path / "index", "nbsp", "{}", new_id="Meeting\u00a0notes.md")
    plant_row(tmp_path / "index", "dots", "{}", new_id="x/../y")
    for doc_id, path in [
        ("Meeting\u00a0notes.md", "Meeting\u00a0notes.md"),
        ("x/../y", "x/%2E%2E/y"),  # the client would resolve a plain '..' away
    ]:
        r = client.put(f"/v1/documents/{path}", json={"text": "new text"})
        assert r.status_code == 200 and r.json()["id"] == doc_id, r.text
        assert r.json()["status"] == "updated"
        assert client.get(f"/v1/documents/{path}").json()["text"] == "new text"
    assert client.get("/v1/documents").json()["total"] == 2
    refused(
        client.put("/v1/documents/new\u00a0id", json={"text": "t"}), ["path", "doc_id"], "U+00A0"
    )
    refused(
        client.put("/v1/documents/new/%2E%2E/id", json={"text": "t"}), ["path", "doc_id"], "'..'"
    )
    refused(
        client.put("/v1/documents/new\u202eid", json={"text": "t"}), ["path", "doc_id"], "U+202E"
    )
    assert client.get("/v1/documents").json()["total"] == 2


def test_uploads_map_look_alike_spaces_and_dot_segments_and_update_stored_ids(
    client: Any, tmp_path: Path
) -> None:
    assert client.post("/v1/documents", json={"id": "p", "text": "old"}).status_code == 201
    plant_row(tmp_path / "index", "p", "{}", new_id="a\u00a0b")  # a line an older version took
    lines = [
        {"id": "./docs/a.md", "text": "found by find"},
        {"id": "a\u00a0b", "text": "updated in place"},
        {"id": "c\u00a0d", "text": "a new look-alike id"},
    ]
    raw = "\n".join(json.dumps(x, ensure_ascii=False) for x in lines).encode()
    files = [
        ("files", ("Meeting\u00a0notes.md", b"# Notes\n\nagenda", "text/markdown")),
        ("files", ("at 10.00.00\u202fAM.txt", b"screenshot text", "text/plain")),
        ("files", ("docs.jsonl", raw, "application/octet-stream")),
    ]
    r = client.post("/v1/documents/upload", files=files)
    assert r.status_code == 201, r.text
    written = {d["id"]: d["status"] for d in r.json()["documents"]}
    assert written == {
        "Meeting notes.md": "added",
        "at 10.00.00 AM.txt": "added",
        "docs/a.md": "added",
        "a\u00a0b": "updated",
    }
    [failed] = r.json()["failed"]
    assert failed["source"] == "docs.jsonl:3" and "U+00A0" in failed["reason"]
    assert client.get("/v1/documents/a\u00a0b").json()["text"] == "updated in place"
    assert client.get("/v1/documents").json()["total"] == 4

"""What the index accepts (ids, text, metadata, filters: each at its bound and one past it) and
that every read serves whatever a row already holds, even one written before the bounds."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from retriever.errors import InvalidDocument, InvalidSearch
from retriever.index import TEXT_MAX_CHARS, DocumentIn, Retriever
from retriever.store import RAW_METADATA_KEY, READ_MAX_DEPTH
from retriever.validation import (
    FILTER_MAX_KEYS,
    FILTER_MAX_STRING_CHARS,
    FILTER_MAX_VALUES,
    ID_MAX_CHARS,
    INT_BOUND,
    METADATA_MAX_BYTES,
    METADATA_MAX_DEPTH,
    METADATA_MAX_KEY_CHARS,
    normal_id,
)
from tests.fakes import FakeEmbedder
from tests.helpers import plant_row


@pytest.fixture
def r(tmp_path: Path) -> Retriever:
    return Retriever(tmp_path / "idx", FakeEmbedder())


def nested(depth: int) -> dict[str, Any]:
    """An object ``depth`` levels deep, the outer object counted: {"a": {"a": ... {}}}."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def _refused(r: Retriever, doc: DocumentIn, field: str) -> None:
    with pytest.raises(InvalidDocument, match=rf"^{re.escape(field)}: "):
        r.upsert(doc)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "   ",
        "a\nb",
        "a\x7fb",
        "a\u202eb",
        "a\u2028b",
        "a\u200bb",
        "x" * (ID_MAX_CHARS + 1),
        "a\u00a0b",  # a look-alike of "a b"
        "a\u3000b",
        "\ufffd\ufffd",  # what undecodable bytes in a URL became
        "a\ud800b",
        ".",
        "..",
        "a/../b",
        "docs/.",
    ],
)
def test_ids_are_printable_and_bounded(r: Retriever, bad: str) -> None:
    _refused(r, DocumentIn("text", bad), "id")
    assert len(r) == 0


def test_an_id_at_its_bound_and_unicode_ids_are_kept(r: Retriever) -> None:
    for doc_id in ("x" * ID_MAX_CHARS, "guides/zh/启动.txt", "naïve café", "a..b/.c", "😀"):
        r.upsert(DocumentIn("text", doc_id))
        assert r.get(doc_id).id == doc_id


def test_text_is_bounded(r: Retriever) -> None:
    _refused(r, DocumentIn("x" * (TEXT_MAX_CHARS + 1), "big"), "text")
    _refused(r, DocumentIn(" \n", "blank"), "text")
    _refused(r, DocumentIn("bad \ud800 text", "surrogate"), "text")  # was a 500 at hashing
    assert len(r) == 0


def test_metadata_strings_and_keys_are_valid_unicode_without_controls(r: Retriever) -> None:
    _refused(r, DocumentIn("t", "d", {"x": "a\ud800"}), "metadata.x")
    _refused(r, DocumentIn("t", "d", {"x": ["ok", "\udfff"]}), "metadata.x[1]")
    _refused(r, DocumentIn("t", "d", {"a\x00": 1}), "metadata")
    _refused(r, DocumentIn("t", "d", {"\ud800": 1}), "metadata")
    r.upsert(DocumentIn("t", "d", {"emoji": "😀", "with tab": "a\tb"}))
    assert r.get("d").metadata == {"emoji": "😀", "with tab": "a\tb"}


def test_metadata_depth_size_keys_and_numbers_are_bounded(r: Retriever) -> None:
    r.upsert(DocumentIn("deep enough", "ok", nested(METADATA_MAX_DEPTH)))
    _refused(r, DocumentIn("t", "d", nested(METADATA_MAX_DEPTH + 1)), "metadata" + ".a" * 8)
    _refused(r, DocumentIn("t", "d300", nested(300)), "metadata" + ".a" * 8)
    pad = METADATA_MAX_BYTES - len(json.dumps({"p": ""}))
    r.upsert(DocumentIn("at the size bound", "size", {"p": "x" * pad}))
    _refused(r, DocumentIn("t", "big", {"p": "x" * (pad + 1)}), "metadata")
    _refused(r, DocumentIn("t", "k", {"k" * (METADATA_MAX_KEY_CHARS + 1): 1}), "metadata")
    r.upsert(DocumentIn("t", "int", {"n": INT_BOUND - 1}))
    _refused(r, DocumentIn("t", "int2", {"n": INT_BOUND}), "metadata.n")
    _refused(r, DocumentIn("t", "nan", {"x": [1.0, float("nan")]}), "metadata.x[1]")
    _refused(r, DocumentIn("t", "obj", {"x": object()}), "metadata.x")
    _refused(r, DocumentIn("t", "list", ["not", "an", "object"]), "metadata")  # type: ignore[arg-type]
    assert sorted(d.id for d in r.documents()) == ["int", "ok", "size"]


def test_a_bad_document_in_a_batch_is_named_and_the_batch_writes_nothing(r: Retriever) -> None:
    docs = [DocumentIn("one", "a"), DocumentIn("two", "b", {"x": nested(9)})]
    with pytest.raises(InvalidDocument, match=r"^documents\[1\]\.metadata\.x"):
        r.upsert_many(docs)
    with pytest.raises(InvalidDocument, match=r"^documents\[2\]\.id: 'a' appears twice"):
        r.upsert_many([DocumentIn("one", "a"), DocumentIn("two", "b"), DocumentIn("3", "a")])
    assert len(r) == 0


def test_filters_are_bounded_scalars(r: Retriever) -> None:
    r.upsert(DocumentIn("apt packages", "a", {"tag": "apt", "n": 1}))
    at_bounds = {f"k{i}": None for i in range(FILTER_MAX_KEYS - 1)}
    at_bounds["tag"] = [
        "apt",
        *("x" * FILTER_MAX_STRING_CHARS for _ in range(FILTER_MAX_VALUES - 1)),
    ]
    assert [h.doc_id for h in r.search("apt", 5, filters=at_bounds)] == ["a"]  # None: missing
    past = [
        ({f"k{i}": 1 for i in range(FILTER_MAX_KEYS + 1)}, "filters"),
        ({"tag": ["apt"] * (FILTER_MAX_VALUES + 1)}, "filters.tag"),
        ({"tag": "x" * (FILTER_MAX_STRING_CHARS + 1)}, "filters.tag"),
        ({"tag": [["apt"]]}, "filters.tag[0]"),
        ({"n": float("inf")}, "filters.n"),
        ({"n": INT_BOUND}, "filters.n"),
    ]
    for filters, field in past:
        with pytest.raises(InvalidSearch, match=rf"^{re.escape(field)}: "):
            r.search("apt", 5, filters=filters)


# ---- reads serve rows written before the bounds ----------------------------------------------


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def test_rows_that_break_the_bounds_stay_readable(tmp_path: Path) -> None:
    folder = tmp_path / "idx"
    r = Retriever(folder, FakeEmbedder())
    for doc_id in ("deep", "list", "broken", "bidi", "lone"):
        r.upsert(DocumentIn(f"apt packages {doc_id}", doc_id, {"ok": True}))
    r.close()
    deep = nested(300)
    deep["tag"] = "apt"
    plant_row(folder, "deep", json.dumps(deep))
    plant_row(folder, "list", "[1, 2]")
    plant_row(folder, "broken", '{"a": ')
    plant_row(folder, "bidi", json.dumps({"tag": ["apt"]}), new_id="evil\u202ename")
    plant_row(folder, "lone", '{"x": "a\\ud800b", "\\udc00": 1}')  # lone surrogates

    r = Retriever(folder, FakeEmbedder())
    got = r.get("deep").metadata
    assert got["tag"] == "apt" and _depth(got) == READ_MAX_DEPTH
    clipped = got
    for _ in range(READ_MAX_DEPTH - 1):
        clipped = clipped["a"]
    assert json.loads(clipped["a"]) == nested(300 - READ_MAX_DEPTH)  # nothing lost: its JSON
    assert r.get("list").metadata == {RAW_METADATA_KEY: "[1, 2]"}
    lone = r.get("lone").metadata
    assert lone == {"x": "a\ufffdb", "\ufffd": 1} and json.dumps(lone, ensure_ascii=False).encode()
    assert r.get("broken").metadata == {RAW_METADATA_KEY: '{"a": '}
    assert r.get("evil\u202ename").metadata == {"tag": ["apt"]}
    assert len(r.documents(0, 10)) == 5
    hits = r.search("apt packages", 10, filters={"tag": "apt"})
    assert sorted(h.doc_id for h in hits) == ["deep", "evil\u202ename"]
    assert len(r.search("apt packages", 10, filters={RAW_METADATA_KEY: "[1, 2]"})) == 1
    r.delete(["evil\u202ename"])
    r.close()


def test_a_page_past_the_end_is_empty_however_far(r: Retriever) -> None:
    r.upsert(DocumentIn("text", "a"))
    assert r.documents(10**30, 10) == [] and [d.id for d in r.documents(0, 10**30)] == ["a"]


@pytest.mark.parametrize("legacy", ["a\u00a0b", "./docs/a.md", "x/../y", "\ufffd\ufffd.md"])
def test_an_id_stored_before_the_newer_rules_can_still_be_updated(
    tmp_path: Path, legacy: str
) -> None:
    folder = tmp_path / "idx"
    r = Retriever(folder, FakeEmbedder())
    r.upsert(DocumentIn("old text", "placeholder"))
    r.close()
    plant_row(folder, "placeholder", "{}", new_id=legacy)  # what an older version stored

    r = Retriever(folder, FakeEmbedder())
    assert r.upsert(DocumentIn("new text", legacy)).status == "updated"
    assert r.get(legacy).text == "new text" and len(r) == 1
    _refused(r, DocumentIn("text", legacy.replace("a", "c") + "-new"), "id")  # a new id: refused
    assert len(r) == 1
    r.close()


def test_a_stored_id_with_a_control_character_is_still_refused(tmp_path: Path) -> None:
    folder = tmp_path / "idx"
    r = Retriever(folder, FakeEmbedder())
    r.upsert(DocumentIn("old text", "placeholder"))
    r.close()
    plant_row(folder, "placeholder", "{}", new_id="evil\u202ename")
    r = Retriever(folder, FakeEmbedder())
    _refused(r, DocumentIn("new text", "evil\u202ename"), "id")
    assert r.get("evil\u202ename").text == "old text"
    r.close()


def test_normal_ids_drop_dot_segments_and_map_look_alike_spaces() -> None:
    assert normal_id("./docs/a.md") == "docs/a.md" and normal_id("a/./b/.") == "a/b"
    assert normal_id("././x") == "x" and normal_id("a/../b") == "a/../b"
    assert normal_id(".") == "." and normal_id("./") == "./"  # nothing left: check_id refuses
    assert normal_id("10.00.00\u202fAM\u00a0x.png") == "10.00.00\u202fAM\u00a0x.png"
    assert normal_id("10.00.00\u202fAM\u00a0x.png", spaces=True) == "10.00.00 AM x.png"
    assert normal_id("a\ufffdb", spaces=True) == "a\ufffdb"

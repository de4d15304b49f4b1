"""Files become documents: txt, md, html and jsonl, folders recursively, errors per file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retriever.errors import InvalidDocument
from retriever.index import DocumentIn, Retriever
from retriever.loaders import LoadError, html_to_text, iter_files, load_file, safe_name
from retriever.validation import ID_MAX_CHARS, check_id
from tests.fakes import FakeEmbedder
from tests.helpers import plant_row


def _load(path: Path, root: Path) -> list:
    return list(load_file(path, root))


def test_folder_walk_and_ids_relative_to_the_root(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("plain text")
    (tmp_path / "sub" / "b.md").write_text("# Title B\n\nbody")
    (tmp_path / "sub" / "skip.bin").write_bytes(b"\0")
    found = [(f.relative_to(tmp_path).as_posix(), r) for f, r in iter_files([tmp_path])]
    assert found == [("a.txt", tmp_path), ("sub/b.md", tmp_path)]
    doc = _load(tmp_path / "sub" / "b.md", tmp_path)[0]
    assert isinstance(doc, DocumentIn)
    assert doc.id == "sub/b.md" and doc.metadata == {"source": "sub/b.md", "title": "Title B"}


def test_html_drops_scripts_and_keeps_blocks() -> None:
    title, text = html_to_text(
        "<html><head><title>T</title><style>x{}</style></head><body>"
        "<h1>Head</h1><p>one &amp; two</p><script>evil()</script>"
        "<p>中文段落</p></body></html>"
    )
    assert title == "T" and text == "# Head\none & two\n中文段落"  # headings as Markdown


def test_jsonl_lines_with_errors_reported_by_line(tmp_path: Path) -> None:
    f = tmp_path / "docs.jsonl"
    f.write_text(
        '{"id": "x", "text": "hello", "metadata": {"tags": ["a"]}}\n'
        "not json\n"
        '{"_id": "y", "title": "Y", "text": "beir style"}\n'
        '{"id": "z"}\n'
    )
    items = _load(f, tmp_path)
    docs = [i for i in items if isinstance(i, DocumentIn)]
    errors = [i for i in items if isinstance(i, LoadError)]
    assert [d.id for d in docs] == ["x", "y"]
    assert docs[1].metadata["title"] == "Y" and docs[0].metadata["tags"] == ["a"]
    assert [e.source.rsplit(":", 1)[1] for e in errors] == ["2", "4"]


def test_empty_and_undecodable_files_are_errors(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\xfa")
    assert isinstance(_load(tmp_path / "empty.txt", tmp_path)[0], LoadError)
    assert "unreadable" in _load(tmp_path / "bad.txt", tmp_path)[0].reason


def test_jsonl_splits_lines_on_newline_only(tmp_path: Path) -> None:
    f = tmp_path / "seps.jsonl"
    lines = [
        {"id": "ls", "text": "line\u2028separator"},
        {"id": "ps", "text": "para\u2029graph", "metadata": {"note": "nel\x85 vt\x0b fs\x1c"}},
        {"id": "crlf", "text": "windows"},
    ]
    raw = "\ufeff" + "\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\r\n"
    f.write_text(raw, encoding="utf-8", newline="")
    items = _load(f, tmp_path)
    assert all(isinstance(i, DocumentIn) for i in items), items
    assert [(d.id, d.text) for d in items] == [(x["id"], x["text"]) for x in lines]
    assert items[1].metadata["note"] == "nel\x85 vt\x0b fs\x1c"


def test_jsonl_lines_the_index_would_refuse_are_reported_by_line(tmp_path: Path) -> None:
    deep: dict = {}
    for _ in range(300):
        deep = {"a": deep}
    rows = [
        {"id": "good", "text": "kept"},
        {"id": "evil\u202ename", "text": "bidi id"},
        {"id": "ctl\x07", "text": "control id"},
        {"id": "deep", "text": "deep metadata", "metadata": deep},
        {"id": "blank", "text": "   "},
        {"id": ["not", "a", "string"], "text": "list id"},
        {"id": "x" * 300, "text": "long id"},
    ]
    f = tmp_path / "bad.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    items = _load(f, tmp_path)
    assert [i.id for i in items if isinstance(i, DocumentIn)] == ["good"]
    errors = {e.source.split(" ")[0]: e.reason for e in items if isinstance(e, LoadError)}
    assert sorted(errors) == [f"{f}:{n}" for n in range(2, 8)]
    assert errors[f"{f}:2"].startswith("id: control, format") and "U+202E" in errors[f"{f}:2"]
    assert errors[f"{f}:3"].startswith("id: control")
    assert errors[f"{f}:4"].startswith("metadata.a.a.a.a.a.a.a.a: nested deeper")
    assert errors[f"{f}:5"] == "document text is empty"
    assert errors[f"{f}:6"] == "id: must be a string"
    assert errors[f"{f}:7"].startswith("id: at most 256 characters")


def test_a_file_whose_name_is_not_a_valid_id_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "bell\x07.txt"
    bad.write_text("text")
    [item] = _load(bad, tmp_path)
    assert isinstance(item, LoadError) and item.reason.startswith("id: control")


def test_a_jsonl_line_that_is_not_utf8_costs_that_line_only(tmp_path: Path) -> None:
    f = tmp_path / "mixed.jsonl"
    f.write_bytes(
        b'{"id": "a", "text": "one"}\n{"id": "b", "text": "t\xff"}\n{"id": "c", "text": "3"}\n'
    )
    items = _load(f, tmp_path)
    assert [i.id for i in items if isinstance(i, DocumentIn)] == ["a", "c"]
    [error] = [i for i in items if isinstance(i, LoadError)]
    assert error.source == f"{f}:2" and error.reason.startswith("not UTF-8 text")


def test_jsonl_lines_json_cannot_read_are_reported_as_every_jsonl_input_reports_them(
    tmp_path: Path,
) -> None:
    f = tmp_path / "odd.jsonl"
    f.write_text(
        '{"id": "a", "text": "kept"}\n'
        + '{"id": "b", "text": "x", "n": '
        + "9" * 5000
        + "}\n"
        + '{"id": "c", "text": '
        + "[" * 50_000
        + "]" * 50_000
        + "}\n"
        + '{"id": 7, "text": "an integer id"}\n'
    )
    items = _load(f, tmp_path)
    assert [i.id for i in items if isinstance(i, DocumentIn)] == ["a", "7"]
    reasons = {e.source: e.reason for e in items if isinstance(e, LoadError)}
    assert reasons[f"{f}:2"].startswith("not JSON (an integer of 5000 digits")
    assert reasons[f"{f}:3"].startswith("not JSON (nested too deeply")


def test_a_line_is_labelled_with_its_id_only_when_the_id_is_valid(tmp_path: Path) -> None:
    f = tmp_path / "labels.jsonl"
    rows = [{"id": "fine", "text": "   "}, {"id": "no\u00a0break\u202e", "text": "   "}]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    sources = [e.source for e in _load(f, tmp_path) if isinstance(e, LoadError)]
    assert sources == [f"{f}:1 (fine)", f"{f}:2"]


def test_safe_names_are_valid_ids_that_keep_their_type() -> None:
    long = safe_name("dir/" + "x" * 300 + ".jsonl")
    assert long.endswith(".jsonl") and len(long) == ID_MAX_CHARS and check_id(long) == long
    assert safe_name("..\\evil\u202e\x07name.txt") == "evilname.txt"
    assert safe_name("\u200b.hidden") == "hidden"
    assert safe_name("") == "upload.txt" and safe_name("...") == "upload.txt"
    assert check_id(safe_name("a\u00a0b\u3000c.md")) == safe_name("a\u00a0b\u3000c.md")


def test_find_style_jsonl_ids_lose_their_dot_segments(tmp_path: Path) -> None:
    f = tmp_path / "found.jsonl"
    rows = [
        {"id": "./docs/a.md", "text": "one"},
        {"id": "docs/./b.md", "text": "two"},
        {"id": "docs/a.md", "text": "the same id as line 1"},
        {"id": "x/../y", "text": "'..' is refused only when the index says it is new"},
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    items = _load(f, tmp_path)
    docs = [i for i in items if isinstance(i, DocumentIn)]
    assert [(d.id, d.stored_as) for d in docs] == [
        ("docs/a.md", "./docs/a.md"),
        ("docs/b.md", "docs/./b.md"),
        ("x/../y", None),
    ]
    [repeat] = [i for i in items if isinstance(i, LoadError)]
    assert repeat.source == f"{f}:3 (docs/a.md)" and "already given on line 1" in repeat.reason
    with_index = list(load_file(f, tmp_path, stored=lambda doc_id: False))
    [refused] = [i for i in with_index if isinstance(i, LoadError) and i.source.endswith(":4")]
    assert refused.reason.startswith("id: '.' and '..'")


def test_look_alike_spaces_in_file_names_are_ascii_spaces_here_and_in_safe_name(
    tmp_path: Path,
) -> None:
    names = ["Meeting\u00a0notes.md", "Screenshot 2024-05-01 at 10.00.00\u202fAM.txt"]
    for name in names:
        (tmp_path / name).write_text("# T\n\nbody")
    ids = [d.id for d in (_load(tmp_path / n, tmp_path)[0] for n in names)]
    assert ids == ["Meeting notes.md", "Screenshot 2024-05-01 at 10.00.00 AM.txt"]
    assert [safe_name(n) for n in names] == ids
    assert safe_name("uploads/a\u00a0b\u3000c.md") == "a b c.md"


def test_reingest_of_input_stored_before_the_id_rules_updates_it(tmp_path: Path) -> None:
    """Files and lines an older loader stored under ids the newer rules refuse (look-alike
    spaces, './' paths, '..' segments) are updated in place, by the CLI's path (the index
    decides) and by the upload's (the loader asks the index), never duplicated or refused."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "Meeting\u00a0notes.md").write_text("# Notes\n\nagenda")
    rows = [
        {"id": "./docs/a.md", "text": "a"},
        {"id": "a\u00a0b", "text": "nbsp"},
        {"id": "x/../y", "text": "dots"},
    ]
    (src / "found.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    as_stored = {  # the id each document had, as the loader gives it
        str(d.stored_as or d.id): d
        for f, root in iter_files([src])
        for d in load_file(f, root)
        if isinstance(d, DocumentIn)
    }
    assert sorted(as_stored) == ["./docs/a.md", "Meeting\u00a0notes.md", "a\u00a0b", "x/../y"]
    folder = tmp_path / "idx"
    r = Retriever(folder, FakeEmbedder())
    for i, doc in enumerate(as_stored.values()):
        r.upsert(DocumentIn(doc.text, f"p{i}", doc.metadata))
    r.close()
    for i, (doc_id, doc) in enumerate(as_stored.items()):
        plant_row(folder, f"p{i}", json.dumps(doc.metadata), new_id=doc_id)

    r = Retriever(folder, FakeEmbedder())
    for stored in (None, r.has):  # the CLI's ingest, then the upload's
        items = [i for f, root in iter_files([src]) for i in load_file(f, root, stored)]
        docs = [i for i in items if isinstance(i, DocumentIn)]
        assert len(docs) == len(items), items
        assert {w.status for w in r.upsert_many(docs)} == {"unchanged"}
    assert sorted(d.id for d in r.documents(0, 10)) == sorted(as_stored)
    (src / "Meeting\u00a0notes.md").write_text("# Notes\n\nnew agenda")
    [changed] = load_file(src / "Meeting\u00a0notes.md", src)
    assert isinstance(changed, DocumentIn) and r.upsert(changed).status == "updated"
    assert r.get("Meeting\u00a0notes.md").text.endswith("new agenda")
    assert len(r) == 4
    r.close()


def test_a_new_id_the_rules_refuse_is_refused_by_the_index_or_by_the_line(
    tmp_path: Path,
) -> None:
    f = tmp_path / "new.jsonl"
    f.write_text('{"id": "a\\u00a0b", "text": "nbsp"}\n{"id": "ok", "text": "fine"}\n')
    r = Retriever(tmp_path / "idx", FakeEmbedder())
    [nbsp, ok] = _load(f, tmp_path)  # no index at hand: the index decides
    with pytest.raises(InvalidDocument, match="^id: look-alike character U\\+00A0"):
        r.upsert(nbsp)
    [line, ok] = list(load_file(f, tmp_path, r.has))
    assert isinstance(line, LoadError) and line.source == f"{f}:1"
    assert line.reason.startswith("id: look-alike character U+00A0")
    assert isinstance(ok, DocumentIn) and r.upsert(ok).status == "added" and len(r) == 1
    r.close()

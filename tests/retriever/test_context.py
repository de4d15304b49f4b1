"""Chunks carry their context: structure-aware splitting, titles and sections embedded and
BM25-indexed (never stored or cited), and indexes embedded before that keep working until a
reindex brings them up to date."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from retriever.chunking import (
    TEXT_VERSION,
    document_title,
    embedding_text,
    headings,
    is_markdown,
    split,
)
from retriever.config import RetrieverConfig
from retriever.index import DB_NAME, DocumentIn, Retriever, space_of
from tests.fakes import FakeEmbedder

GUIDE = """# Guide

Intro text about this guide.

## Install

Use the package manager.

### apt

```sh
# a shell comment, not a heading
apt-get install foo
```

| tool | use |
|------|-----|
| apt  | install |

## Remove

Run apt remove to take a package away.
"""


class Recording(FakeEmbedder):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.seen: list[str] = []

    def encode(self, texts: list[str], **kw: Any) -> np.ndarray:
        self.seen += texts
        return super().encode(texts, **kw)


def test_markdown_is_cut_at_headings_with_exact_spans_and_paths() -> None:
    chunks = split(GUIDE, 400, 40, markdown=True, title="Guide")
    for c in chunks:
        assert GUIDE[c.start : c.end] == c.text
    sections = [c.section for c in chunks]
    assert sections == ["", "Install", "Install > apt", "Remove"]
    assert chunks[1].text == "## Install\n\nUse the package manager."
    assert [h.title for h in headings(GUIDE)] == ["Guide", "Install", "apt", "Remove"]


def test_code_blocks_and_tables_are_kept_whole_where_they_fit() -> None:
    code = "```\n" + "\n".join(f"line {i} of the program" for i in range(12)) + "\n```"
    table = "| a | b |\n|---|---|\n" + "\n".join(f"| {i} | value {i} |" for i in range(12))
    text = "# T\n\n" + "words " * 40 + "\n\n" + code + "\n\n" + table + "\n\nend words here."
    chunks = split(text, 300, 30, markdown=True)
    assert any(code in c.text for c in chunks)
    assert any(table in c.text for c in chunks)
    for c in chunks:
        assert text[c.start : c.end] == c.text and len(c.text) <= 300


def test_plain_text_is_split_as_before() -> None:
    text = "A sentence about apt. " * 60 + "\n# not a heading, a comment\n" + "more. " * 30
    assert not is_markdown(text, {"source": "notes.txt"})
    assert all(c.section == "" for c in split(text, 200, 20))


def test_which_documents_are_markdown() -> None:
    assert is_markdown("plain", {"source": "docs/a.md"})
    assert is_markdown("plain", {"source": "page.HTML"})
    assert is_markdown("\n# Title\ntext", {})
    assert not is_markdown("text\n# comment", {})
    assert document_title("# First\n## Second", {}) == "First"
    assert document_title("# First", {"title": "  Given   title "}) == "Given title"
    assert document_title("no heading", {}) == ""


def test_context_is_embedded_and_indexed_but_not_stored_or_cited(tmp_path: Path) -> None:
    emb = Recording()
    r = Retriever(tmp_path, emb, RetrieverConfig(chunk_size=400, chunk_overlap=40))
    r.upsert(DocumentIn(GUIDE, "guide.md", {"source": "guide.md", "title": "Guide"}))
    assert embedding_text("Guide", "Install > apt", "x") == "Guide — Install > apt\nx"
    assert any(t.startswith("Guide — Install > apt\n### apt") for t in emb.seen)
    # only the title holds "guide" in the Remove chunk: BM25 finds it through its context
    hits = r.search("guide remove", k=4, mode="sparse")
    remove = next(h for h in hits if h.section == "Remove")
    assert remove.title == "Guide" and remove.text.startswith("## Remove")
    assert GUIDE[remove.start : remove.end] == remove.text
    r.close()


def test_changed_context_re_embeds_unchanged_does_not(tmp_path: Path) -> None:
    emb = Recording()
    r = Retriever(tmp_path, emb)
    r.upsert(DocumentIn("the same body text", "d", {"title": "One"}))
    r.upsert(DocumentIn("the same body text", "d", {"title": "One", "n": 2}))
    assert emb.texts_embedded == 1  # metadata changed, the embedded text did not
    r.upsert(DocumentIn("the same body text", "d", {"title": "Two"}))
    assert emb.texts_embedded == 2 and emb.seen[-1] == "Two\nthe same body text"
    r.close()


def _make_old(folder: Path, emb: FakeEmbedder) -> str:
    """Turn an index into what the code before chunk context wrote: no title/section columns,
    no text-version meta, vectors of the bare chunk texts in the identity-only space."""
    old_space = space_of(emb.identity, 1)
    db = sqlite3.connect(folder / DB_NAME)
    db.execute("DELETE FROM meta WHERE key IN ('embedding_text', 'chunk_context')")
    db.execute("UPDATE meta SET value=? WHERE key='space'", (old_space,))
    rows = db.execute("SELECT id, text FROM chunks").fetchall()
    db.execute("DELETE FROM vectors")
    for cid, text in rows:
        vec = emb.encode([text])[0]
        digest = hashlib.sha256(text.encode()).hexdigest()
        db.execute("INSERT INTO vectors VALUES (?, ?, ?, ?)", (old_space, cid, digest, vec))
    db.execute("UPDATE chunks SET hash = (SELECT hash FROM vectors WHERE chunk_id = chunks.id)")
    db.execute("ALTER TABLE chunks DROP COLUMN title")
    db.execute("ALTER TABLE chunks DROP COLUMN section")
    db.commit()
    db.close()
    for f in folder.glob("*.faiss"):
        f.unlink()
    return old_space


def test_an_index_embedded_without_context_keeps_its_space_until_reindexed(
    tmp_path: Path,
) -> None:
    r = Retriever(tmp_path, FakeEmbedder(), RetrieverConfig(chunk_size=400, chunk_overlap=40))
    r.upsert(DocumentIn(GUIDE, "guide.md", {"source": "guide.md", "title": "Guide"}))
    r.close()
    emb = Recording()
    old_space = _make_old(tmp_path, emb)
    emb.seen.clear()

    r = Retriever(tmp_path, emb, RetrieverConfig(chunk_size=400, chunk_overlap=40))
    assert r.needs_reembedding and r.space == old_space and r.text_version == 1
    hits = r.search("apt-get install", k=2, mode="dense")
    assert hits[0].section == "Install > apt" and hits[0].title == "Guide"  # filled on open
    r.upsert(DocumentIn("a new note about dpkg", "note", {"title": "Note"}))
    assert emb.seen == ["apt-get install", "a new note about dpkg"]  # old space: bare text
    assert set(r.store.spaces()) == {old_space}

    result = r.reindex(emb)
    assert result["switched"] and result["to"] == space_of(emb.identity, TEXT_VERSION)
    assert not r.needs_reembedding and "Note\na new note about dpkg" in emb.seen
    assert r.search("dpkg note", k=1, mode="dense")[0].doc_id == "note"
    r.close()
    r = Retriever(tmp_path, emb)
    assert not r.needs_reembedding and r.space == result["to"]
    assert r.reindex(emb) == {"switched": False, "reason": "already built with this embedder"}
    r.close()

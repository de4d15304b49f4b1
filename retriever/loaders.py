"""Read files into documents: txt, md, html and jsonl, from files or folders (recursively).

A plain file becomes one document whose id is its path relative to the folder given (so
re-ingesting a folder updates documents instead of duplicating them). A jsonl line is
``{"id", "text", "metadata"}`` or BEIR's ``{"_id", "title", "text"}``; lines are split on
``\n`` only (a JSON string may hold U+2028 or other characters ``str.splitlines`` would split
on). Every document is checked as the index will check it (``retriever.index.check_document``:
printable ids, bounded text and metadata), so unreadable input is reported per file, and per
line of a jsonl file (``name:line``), never fatal to the rest. Knows nothing of chunking.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from retriever.errors import InvalidDocument
from retriever.index import DocumentIn, check_document

SUFFIXES = {".txt", ".md", ".markdown", ".html", ".htm", ".jsonl"}
TITLE_MAX_CHARS = 1000  # a page's title is metadata: keep it well inside the metadata bound


@dataclass(frozen=True)
class LoadError:
    source: str
    reason: str


class _TextOfHTML(HTMLParser):
    SKIP = {"script", "style", "noscript", "template"}
    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "section"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self.SKIP:
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP and self._skip:
            self._skip -= 1
        elif tag == "title":
            self._in_title = False
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._skip:
            self.parts.append(data)


def html_to_text(html: str) -> tuple[str, str]:
    """(title, text) of an HTML page, scripts and styles dropped, blocks on their own lines."""
    parser = _TextOfHTML()
    parser.feed(html)
    lines = [" ".join(line.split()) for line in "".join(parser.parts).splitlines()]
    return parser.title.strip(), "\n".join(line for line in lines if line)


def _md_title(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""


def iter_files(paths: list[Path]) -> Iterator[tuple[Path, Path]]:
    """(file, root) for every supported file under ``paths``; root is what ids are relative to."""
    for p in paths:
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix.lower() in SUFFIXES:
                    yield f, p
        else:
            yield p, p.parent


def load_file(path: Path, root: Path) -> Iterator[DocumentIn | LoadError]:
    rel = str(path.relative_to(root)) if path.is_relative_to(root) else path.name
    try:
        data = path.read_bytes()
    except OSError as exc:
        yield LoadError(str(path), f"unreadable: {exc}")
        return
    for item in load_bytes(rel, data):
        yield (
            LoadError(str(path) + item.source[len(rel) :], item.reason)
            if isinstance(item, LoadError)
            else item
        )


def safe_name(name: str) -> str:
    """A client-supplied file name made safe as an id: no directories, no control characters."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if c.isprintable()).strip().lstrip(".") or "upload.txt"
    return base[:200]


def load_bytes(name: str, data: bytes) -> list[DocumentIn | LoadError]:
    """Documents from a file's bytes; ``name`` (relative, never opened) gives the id and type."""
    suffix = Path(name).suffix.lower()
    if suffix not in SUFFIXES:
        return [LoadError(name, f"unsupported file type {suffix or '(none)'}")]
    try:
        raw = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [LoadError(name, f"unreadable: not UTF-8 ({exc.reason})")]
    if suffix == ".jsonl":
        return list(_jsonl(raw, name))
    title, text = html_to_text(raw) if suffix in {".html", ".htm"} else (_md_title(raw), raw)
    if not text.strip():
        return [LoadError(name, "empty document")]
    title = (title or Path(name).stem)[:TITLE_MAX_CHARS]
    return [
        _checked(DocumentIn(text=text, id=name, metadata={"source": name, "title": title}), name)
    ]


def _checked(doc: DocumentIn, where: str) -> DocumentIn | LoadError:
    try:
        check_document(doc)
    except InvalidDocument as exc:
        return LoadError(where, str(exc))
    return doc


def lines(raw: str) -> Iterator[tuple[int, str]]:
    """(1-based number, text) of each line of a JSONL text, split on ``\n`` only; a trailing
    ``\r`` and a leading byte-order mark are dropped."""
    for n, line in enumerate(raw.removeprefix("\ufeff").split("\n"), 1):
        yield n, line.removesuffix("\r")


def _jsonl(raw: str, source: str) -> Iterator[DocumentIn | LoadError]:
    for n, line in lines(raw):
        if not line.strip():
            continue
        where = f"{source}:{n}"
        try:
            row = json.loads(line)
        except ValueError as exc:
            yield LoadError(where, f"invalid JSON: {exc}")
            continue
        except RecursionError:
            yield LoadError(where, "invalid JSON: nested too deeply")
            continue
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            yield LoadError(where, "a line needs a string field 'text'")
            continue
        doc_id = row.get("id", row.get("_id"))
        if isinstance(doc_id, bool) or not isinstance(doc_id, str | int | None):
            yield LoadError(where, "id: must be a string")
            continue
        if doc_id is not None and str(doc_id).isprintable() and len(str(doc_id)) <= 256:
            where = f"{where} ({doc_id})"  # a printable id helps find the line; others do not
        if not row["text"].strip():
            yield LoadError(where, "document text is empty")
            continue
        meta = row.get("metadata") or {}
        if not isinstance(meta, dict):
            yield LoadError(where, "metadata: must be an object")
            continue
        if row.get("title"):
            meta = {**meta, "title": row["title"]}
        doc = DocumentIn(
            text=row["text"],
            id=str(doc_id) if doc_id is not None else None,
            metadata={"source": source, **meta},
        )
        yield _checked(doc, where)

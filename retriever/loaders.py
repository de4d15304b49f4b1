"""Read files into documents: txt, md, html and jsonl, from files or folders (recursively).

A plain file becomes one document whose id is its path relative to the folder given (so
re-ingesting a folder updates documents instead of duplicating them). A jsonl line is
``{"id", "text", "metadata"}`` or BEIR's ``{"_id", "title", "text"}``, read by
``retriever.jsonl`` as every JSONL input is (lines split on ``\n`` only, each decoded alone).
Ids are ``retriever.validation.normal_id``'s (no ``.`` segments; in a file's name, look-alike
spaces as ASCII ones), carrying the id as given (``DocumentIn.stored_as``) so a row an older
version stored under it is updated, not duplicated. Every document is checked as the index
will check it (``retriever.index.check_document``; a new id against ``check_id`` when the
caller says what is stored, else left to the index), so unreadable input is reported per
file, and per line of a jsonl file (``name:line``), never fatal to the rest. Knows nothing of
chunking.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from retriever import jsonl
from retriever.errors import InvalidDocument
from retriever.index import DocumentIn, check_document
from retriever.validation import ID_MAX_CHARS, check_any_id, check_id, id_char, normal_id

Stored = Callable[[str], bool]  # whether the index stores a document under an id
SUFFIXES = {".txt", ".md", ".markdown", ".html", ".htm", ".jsonl"}
TITLE_MAX_CHARS = 1000  # a page's title is metadata: keep it well inside the metadata bound


@dataclass(frozen=True)
class LoadError:
    source: str
    reason: str


class _TextOfHTML(HTMLParser):
    SKIP = {"script", "style", "noscript", "template"}
    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "section"}
    HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}

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
            if tag in self.HEADINGS:  # kept as a Markdown heading line for the splitter
                self.parts.append("#" * int(tag[1]) + " ")

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
    """(title, text) of an HTML page, scripts and styles dropped, blocks on their own lines,
    headings as Markdown heading lines (``## Install``) so the splitter cuts at them."""
    parser = _TextOfHTML()
    parser.feed(html)
    lines = [" ".join(line.split()) for line in "".join(parser.parts).splitlines()]
    kept = (line for line in lines if line and line.lstrip("#"))  # no empty heading
    return parser.title.strip(), "\n".join(kept)


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


def load_file(
    path: Path, root: Path, stored: Stored | None = None
) -> Iterator[DocumentIn | LoadError]:
    rel = str(path.relative_to(root)) if path.is_relative_to(root) else path.name
    try:
        data = path.read_bytes()
    except OSError as exc:
        yield LoadError(str(path), f"unreadable: {exc}")
        return
    for item in load_bytes(rel, data, stored):
        yield (
            LoadError(str(path) + item.source[len(rel) :], item.reason)
            if isinstance(item, LoadError)
            else item
        )


def safe_name(name: str) -> str:
    """A client-supplied file name made safe as an id: no directories, only characters
    ``check_id`` accepts (a look-alike space made an ASCII one, as the loader makes it in a
    file's id), no leading dot, and at most ``ID_MAX_CHARS`` with its suffix kept."""
    base = normal_id(name.replace("\\", "/").rsplit("/", 1)[-1], spaces=True)
    base = "".join(c for c in base if id_char(c)).strip().lstrip(".").strip() or "upload.txt"
    if len(base) > ID_MAX_CHARS:
        suffix = Path(base).suffix[:16]
        base = base[: ID_MAX_CHARS - len(suffix)] + suffix
    return base


def load_bytes(
    name: str, data: bytes, stored: Stored | None = None
) -> list[DocumentIn | LoadError]:
    """Documents from a file's bytes; ``name`` (relative, never opened) gives the id and type;
    ``stored`` (the index's ``has``) lets ids be checked as the index will (see ``_doc_id``)."""
    suffix = Path(name).suffix.lower()
    if suffix not in SUFFIXES:
        return [LoadError(name, f"unsupported file type {suffix or '(none)'}")]
    if suffix == ".jsonl":
        return list(_jsonl(data, name, stored))
    try:
        doc_id, stored_as = _doc_id(name, True, stored)
        raw = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [LoadError(name, f"unreadable: not UTF-8 ({exc.reason})")]
    except ValueError as exc:
        return [LoadError(name, str(exc))]
    title, text = html_to_text(raw) if suffix in {".html", ".htm"} else (_md_title(raw), raw)
    if not text.strip():
        return [LoadError(name, "empty document")]
    title = (title or Path(name).stem)[:TITLE_MAX_CHARS]
    meta = {"source": name, "title": title}  # as given: a re-ingest leaves the hash unchanged
    doc = DocumentIn(text, doc_id, meta, where=name, stored_as=stored_as)
    return [_checked(doc, name, stored)]


def _doc_id(raw: str, spaces: bool, stored: Stored | None) -> tuple[str, str | None]:
    """(id, stored_as) for an id as a file's name or a line gave it: its ``normal_id`` (look-alike
    spaces mapped only with ``spaces``), and the id as given when that differs, for the index
    to update a row stored under it. ``ValueError`` for an id no write takes
    (``check_any_id``), and, when ``stored`` says neither is stored, for a new id ``check_id``
    refuses. Without ``stored`` (no index at hand) the index decides that at its write."""
    new = normal_id(check_any_id(raw), spaces)
    old = raw if raw != new else None
    if stored is not None and not (stored(new) or (old is not None and stored(old))):
        check_id(new)
    return new, old


def _checked(doc: DocumentIn, where: str, stored: Stored | None) -> DocumentIn | LoadError:
    try:  # the id was checked by _doc_id as far as ``stored`` allows: the index checks the rest
        check_document(doc, stored=stored or (lambda _id: True))
    except InvalidDocument as exc:
        return LoadError(where, str(exc))
    return doc


def _jsonl(data: bytes, source: str, stored: Stored | None) -> Iterator[DocumentIn | LoadError]:
    first: dict[str, int] = {}  # id -> the line that gave it first
    for line in jsonl.read_bytes(data):
        where = f"{source}:{line.number}"
        row = line.record
        if row is None:
            yield LoadError(where, line.problem)
            continue
        if not isinstance(row.get("text"), str):
            yield LoadError(where, "a line needs a string field 'text'")
            continue
        doc_id = row.get("id", row.get("_id"))
        if isinstance(doc_id, bool) or not isinstance(doc_id, str | int | None):
            yield LoadError(where, "id: must be a string")
            continue
        stored_as = None
        if doc_id is not None:
            try:
                doc_id, stored_as = _doc_id(str(doc_id), False, stored)
            except ValueError as exc:
                yield LoadError(where, str(exc))
                continue
            where = f"{where} ({doc_id})"  # a valid id helps find the line
            if doc_id in first:
                yield LoadError(where, f"id {doc_id!r} already given on line {first[doc_id]}")
                continue
            first[doc_id] = line.number
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
            row["text"], doc_id, {"source": source, **meta}, where=where, stored_as=stored_as
        )
        yield _checked(doc, where, stored)

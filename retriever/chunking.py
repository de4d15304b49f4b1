"""Split a document into chunks that keep their character span, and say what each is about.

Plain text goes through langchain-text-splitters' recursive splitter with sentence ends of both
languages as separators, so Chinese (no spaces) splits at 。！？ before falling back to
characters. Markdown (and HTML, which ``loaders.html_to_text`` turns into text with ``#``
heading lines) is first cut at its ATX headings (``#`` .. ``######`` outside code fences);
each section is split on its own, and a fenced code block or a table (consecutive ``|`` lines)
that fits in a chunk is never cut, and is kept with its neighbours where they fit together.
Every chunk records ``start``/``end`` offsets into the document text (``text[start:end] ==
chunk.text``) for citations and the heading path of its section (``"Install > apt"``).

``embedding_text`` is what gets embedded and BM25-indexed: the chunk with its document's title
and section in front (``TEXT_VERSION`` 2; version 1 was the bare chunk text). The stored and
cited text stays the document's own. Knows nothing of storage or embedding.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from langchain_text_splitters import RecursiveCharacterTextSplitter

SEPARATORS = ["\n\n", "\n", "。", "！", "？", "；", ". ", "! ", "? ", "; ", "，", ", ", " ", ""]
TEXT_VERSION = 2  # what is embedded: 1 the chunk text alone, 2 "<title> — <section>\n<chunk>"
MARKDOWN_SUFFIXES = (".md", ".markdown", ".html", ".htm")
SECTION_SEP = " > "
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_TABLE_ROW = re.compile(r"^ {0,3}\|")


@dataclass(frozen=True)
class Chunk:
    ordinal: int
    start: int
    end: int
    text: str
    section: str = ""  # heading path of the section it starts in, "" outside any


@dataclass(frozen=True)
class Heading:
    start: int  # offset of the heading line
    end: int  # offset just past it (its newline included)
    level: int
    title: str


def is_markdown(text: str, metadata: Mapping[str, Any] | None = None) -> bool:
    """Whether a document is split by its headings: its metadata ``source`` ends in .md,
    .markdown, .html or .htm, or ``format`` is "markdown"/"html", or (for text given without
    such metadata) its first non-blank line is a ``#`` heading. Plain text whose lines merely
    start with ``#`` later on (shell comments) stays plain text."""
    meta = metadata or {}
    source = meta.get("source")
    if isinstance(source, str) and source.lower().endswith(MARKDOWN_SUFFIXES):
        return True
    if meta.get("format") in ("markdown", "html"):
        return True
    first = next((line for line in text.splitlines() if line.strip()), "")
    return bool(_HEADING.match(first))


def headings(text: str) -> list[Heading]:
    """The ATX headings of a Markdown text, in order; lines inside code fences are skipped."""
    found: list[Heading] = []
    fence: str | None = None
    offset = 0
    for line in text.splitlines(keepends=True):
        bare = line.rstrip("\r\n")
        opener = _FENCE.match(bare)
        if fence is not None:
            if opener and opener.group(1) == fence:
                fence = None
        elif opener:
            fence = opener.group(1)
        else:
            m = _HEADING.match(bare)
            if m:
                found.append(Heading(offset, offset + len(line), len(m.group(1)), m.group(2)))
        offset += len(line)
    return found


def document_title(text: str, metadata: Mapping[str, Any] | None = None) -> str:
    """The document's title: metadata ``title`` if it is a non-empty string, else the first
    heading of a Markdown text, else ""."""
    meta = metadata or {}
    title = meta.get("title")
    if isinstance(title, str) and title.strip():
        return " ".join(title.split())
    if is_markdown(text, meta):
        found = headings(text)
        if found:
            return found[0].title
    return ""


class Sections:
    """The heading path at any offset of a Markdown text (empty for plain text)."""

    def __init__(self, text: str, title: str = "", markdown: bool = True) -> None:
        self.starts: list[int] = [0]
        self.ends: list[int] = [0]
        self.paths: list[str] = [""]
        stack: list[tuple[int, str]] = []
        for h in headings(text) if markdown else []:
            while stack and stack[-1][0] >= h.level:
                stack.pop()
            stack.append((h.level, h.title))
            names = [name for _, name in stack]
            if names and names[0] == title:  # the title heading is said once, as the title
                names = names[1:]
            self.starts.append(h.start)
            self.ends.append(h.end)
            self.paths.append(SECTION_SEP.join(names))

    def at(self, offset: int) -> str:
        return self.paths[bisect.bisect_right(self.starts, offset) - 1]

    def bounds(self, length: int) -> list[tuple[int, int, int]]:
        """(start, end, heading line end) of each section, the text before the first heading
        included; the heading line end is the section's start when it has no heading."""
        edges = [*self.starts[1:], length]
        return [(s, e, h) for s, e, h in zip(self.starts, edges, self.ends, strict=True) if e > s]


def embedding_text(title: str, section: str, text: str) -> str:
    """What a chunk is embedded and BM25-indexed as: ``"<title> — <section>\\n<text>"``, with
    an empty part left out (the bare text when both are empty)."""
    head = " — ".join(part for part in (title, section) if part)
    return f"{head}\n{text}" if head else text


def split(
    text: str, chunk_size: int, chunk_overlap: int, markdown: bool = False, title: str = ""
) -> list[Chunk]:
    """Chunks of ``text`` with exact spans: ``text[c.start:c.end] == c.text``; with
    ``markdown``, cut at headings, fences and tables kept whole (see the module docstring)."""
    if not markdown:
        pieces = _recursive(text, 0, len(text), chunk_size, chunk_overlap)
        return [Chunk(i, s, e, text[s:e]) for i, (s, e) in enumerate(pieces)]
    sections = Sections(text, title)
    chunks: list[Chunk] = []
    for start, end, body in sections.bounds(len(text)):
        path = sections.at(start)
        for s, e in _section(text, start, end, chunk_size, chunk_overlap):
            if e <= body:  # the heading line alone: it is in the next chunks' section
                continue
            chunks.append(Chunk(len(chunks), s, e, text[s:e], path))
    return chunks


def _recursive(text: str, lo: int, hi: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """Spans of the recursive splitter's pieces of ``text[lo:hi]``, as offsets into ``text``."""
    splitter = RecursiveCharacterTextSplitter(
        chunk_size=size,
        chunk_overlap=overlap,
        separators=SEPARATORS,
        keep_separator="end",
        strip_whitespace=True,
    )
    part = text[lo:hi]
    spans: list[tuple[int, int]] = []
    cursor = 0
    for piece in splitter.split_text(part):
        start = part.find(piece, cursor)
        if start < 0:  # overlap made the piece start before the cursor
            start = part.find(piece, max(0, cursor - size))
        if start < 0:
            continue
        spans.append((lo + start, lo + start + len(piece)))
        cursor = start + 1
    return spans


def _blocks(text: str, lo: int, hi: int) -> list[tuple[int, int, bool]]:
    """``text[lo:hi]`` as (start, end, whole) runs: fenced code blocks and tables are whole
    runs, the text between them not."""
    runs: list[tuple[int, int, bool]] = []
    offset, free, fence, table = lo, lo, None, None
    for line in text[lo:hi].splitlines(keepends=True):
        bare = line.rstrip("\r\n")
        end = offset + len(line)
        if fence is not None:
            opener = _FENCE.match(bare)
            if opener and opener.group(1) == fence[0]:
                runs.append((fence[1], end, True))
                fence, free = None, end
        elif (opener := _FENCE.match(bare)) is not None:
            if table is not None:
                runs.append((table, offset, True))
                table = None
            runs.append((free, offset, False))
            fence = (opener.group(1), offset)
        elif _TABLE_ROW.match(bare):
            if table is None:
                runs.append((free, offset, False))
                table = offset
        elif table is not None:
            runs.append((table, offset, True))
            table, free = None, offset
        offset = end
    if fence is not None:  # an unclosed fence runs to the end
        runs.append((fence[1], hi, True))
    elif table is not None:
        runs.append((table, hi, True))
    else:
        runs.append((free, hi, False))
    return [(s, e, whole) for s, e, whole in runs if text[s:e].strip()]


def _section(text: str, lo: int, hi: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """Spans of one section: each run split (a whole run that fits stays one piece), then
    neighbouring pieces merged while they fit in ``size``."""
    pieces: list[tuple[int, int]] = []
    for s, e, whole in _blocks(text, lo, hi):
        if whole and len(text[s:e].strip()) <= size:
            stripped = text[s:e]
            s += len(stripped) - len(stripped.lstrip())
            e -= len(stripped) - len(stripped.rstrip())
            pieces.append((s, e))
        else:
            pieces += _recursive(text, s, e, size, overlap)
    merged: list[tuple[int, int]] = []
    for s, e in pieces:
        if merged and s >= merged[-1][1] and e - merged[-1][0] <= size:
            merged[-1] = (merged[-1][0], e)
        else:
            merged.append((s, e))
    return merged

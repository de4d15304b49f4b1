"""Split a document into chunks that keep their character span, for English and Chinese.

Uses langchain-text-splitters' recursive splitter with sentence ends of both languages as
separators, so Chinese (no spaces) splits at 。！？ before falling back to characters. Each chunk
records ``start``/``end`` offsets into the document text for citations. Knows nothing of storage.
"""

from __future__ import annotations

from dataclasses import dataclass

from langchain_text_splitters import RecursiveCharacterTextSplitter

SEPARATORS = ["\n\n", "\n", "。", "！", "？", "；", ". ", "! ", "? ", "; ", "，", ", ", " ", ""]


@dataclass(frozen=True)
class Chunk:
    ordinal: int
    start: int
    end: int
    text: str


def split(text: str, chunk_size: int, chunk_overlap: int) -> list[Chunk]:
    """Chunks of ``text`` with exact spans: ``text[c.start:c.end] == c.text``."""
    splitter = RecursiveCharacterTextSplitter(
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        separators=SEPARATORS,
        keep_separator="end",
        strip_whitespace=True,
    )
    chunks: list[Chunk] = []
    cursor = 0
    for piece in splitter.split_text(text):
        start = text.find(piece, cursor)
        if start < 0:  # overlap made the piece start before the cursor
            start = text.find(piece, max(0, cursor - chunk_size))
        if start < 0:
            continue
        chunks.append(Chunk(len(chunks), start, start + len(piece), piece))
        cursor = start + 1
    return chunks

"""Cut text into sentences: the one splitter the synthetic-data builders and the pair cutter use.

``sentences(text)`` splits at ``. ! ?`` and at the Chinese ``。！？`` with or without a space
after them, over whitespace-flattened text (language-neutral: the embedder's pseudo-queries,
``tuner.pairs``). ``sentences(text, prose=True)`` reads English documentation prose
(``tuner.synth``): it works paragraph by paragraph, skips blocks of short lines (commands,
output), ends a sentence only before a capital or a quote, never after an abbreviation such as
"e.g.", and lets a sentence ending with ':' carry the short block that follows it.

Knows nothing of chunks, questions, the index or what the sentences are for.
"""

from __future__ import annotations

import re

ANY_END = re.compile(r"(?<=[.!?。！？])\s*")
PROSE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(“])")
ABBREV = re.compile(r"\b(e\.g|i\.e|etc|vs|cf|viz|approx|no)\.$", re.IGNORECASE)


def sentences(text: str, *, prose: bool = False) -> list[str]:
    """The sentences of ``text``: language-neutral, or English prose with ``prose=True``."""
    if prose:
        return _prose_sentences(text)
    return [s.strip() for s in ANY_END.split(" ".join(text.split())) if s.strip()]


def _prose_sentences(text: str) -> list[str]:
    """Sentences of ``text``; a sentence ending with ':' carries the short lines that follow."""
    out: list[str] = []
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    for i, para in enumerate(paragraphs):
        if "\n" in para and all(len(line) < 80 for line in para.splitlines()):
            continue  # a block of short lines (commands, output): not prose
        parts = _split_prose(" ".join(para.split()))
        for j, s in enumerate(parts):
            if s.endswith(":") and j == len(parts) - 1 and i + 1 < len(paragraphs):
                block = paragraphs[i + 1]
                if len(block) <= 200 and len(block.splitlines()) <= 4:
                    s = f"{s}\n{block}"
            out.append(s)
    return out


def _split_prose(para: str) -> list[str]:
    out: list[str] = []
    for piece in PROSE_END.split(para):
        if out and ABBREV.search(out[-1]):
            out[-1] = f"{out[-1]} {piece}"  # "e.g. Foo" is not a sentence end
        else:
            out.append(piece)
    return out

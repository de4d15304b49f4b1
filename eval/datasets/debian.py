"""Build the Debian FAQ evaluation set (BEIR layout) and an ingestable document folder.

From the plain-text FAQ and Debian Reference shipped in Debian's packages it writes::

    OUT/corpus.jsonl        FAQ answers and Reference sections ({_id, title, text, metadata})
    OUT/queries.jsonl       FAQ questions ({_id, text, answer, metadata})
    OUT/qrels/test.tsv      query-id, corpus-id, score
    OUT/documents/*.jsonl   the same corpus as {id, text, metadata}, ready for ``ragtune ingest``
    OUT/manifest.json       packages, counts and checks

FAQ questions never reach the indexed text: answers are indexed under their chapter title,
and cross-references that quote another question (``Section 12.1, “What other …”``) keep only
the section number. Lines the package wrapped mid-sentence are re-joined, without a space
between Chinese characters. This module knows nothing of retrieval or models.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tuner.durable import atomic_write_lines

log = logging.getLogger(__name__)

LANGS = ("en", "zh")
PACKAGES: dict[str, dict[str, tuple[str, str]]] = {
    "en": {
        "faq": ("debian-faq", "/usr/share/doc/debian/FAQ/debian-faq.en.txt.gz"),
        "reference": (
            "debian-reference-en",
            "/usr/share/debian-reference/debian-reference.en.txt.gz",
        ),
    },
    "zh": {
        "faq": ("debian-faq-zh-cn", "/usr/share/doc/debian/FAQ/debian-faq.zh-cn.txt.gz"),
        "reference": (
            "debian-reference-zh-cn",
            "/usr/share/debian-reference/debian-reference.zh-cn.txt.gz",
        ),
    },
}

NBSP = "\u00a0"
CHAPTER_RE = re.compile(r"^(?:Chapter\u00a0(\d+)\.\u00a0(.+)|第\u00a0(\d+)\u00a0章\u00a0(.+))$")
HEADING_RE = re.compile(r"^(\d+(?:\.\d+)+)\.\u00a0(.+)$")
END_RE = re.compile(r"^(?:Appendix|附录)\u00a0")
XREF_RE = re.compile(r"(Section\s+\d+(?:\.\d+)*)\s*,\s*“[^”]*”|(第\s*\d+(?:\.\d+)*\s*节)\s*“[^”]*”")
WRAP_WIDTH = 58  # a line at least this wide (in display columns) was wrapped by the formatter
BULLET = ("* ", "$ ", "# ", "o ")


@dataclass
class Section:
    number: str
    title: str
    chapter: str
    body: str


@dataclass
class Dataset:
    corpus: list[dict] = field(default_factory=list)
    queries: list[dict] = field(default_factory=list)
    qrels: list[tuple[str, str, int]] = field(default_factory=list)
    checks: dict[str, int] = field(default_factory=dict)


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _wide(c: str) -> bool:
    return unicodedata.east_asian_width(c) in "WF"


def _wide_punct(c: str) -> bool:
    return _wide(c) and unicodedata.category(c).startswith("P")


def join_wrapped(left: str, right: str) -> str:
    """Join two pieces of one sentence: no space next to a wide (CJK) character or inside a URL."""
    if not left or not right:
        return left + right
    last_token = left.split()[-1] if left.split() else ""
    in_url = (
        "://" in last_token or last_token.startswith(("http", "www.")) or right.startswith("//")
    )
    a, b = left[-1], right[0]
    if (_wide(a) and _wide(b)) or _wide_punct(a) or _wide_punct(b):
        return left + right  # Chinese wraps anywhere; no space was there
    if in_url and a in "/:.-_#?=&":
        return left + right
    return f"{left} {right}"  # English, or Chinese next to a Latin word (spaced in these texts)


def unwrap(lines: Iterable[str]) -> str:
    """Re-join lines the formatter wrapped; keep paragraphs, list items and short lines apart."""
    paragraphs: list[list[str]] = [[]]
    prev_width = 0
    for raw in lines:
        line = raw.replace(NBSP, " ").rstrip()
        text = line.strip()
        if not text:
            if paragraphs[-1]:
                paragraphs.append([])
            prev_width = 0
            continue
        current = paragraphs[-1]
        aligned = "   " in text or (current and "   " in current[-1])  # code or a table
        if current and prev_width >= WRAP_WIDTH and not text.startswith(BULLET) and not aligned:
            current[-1] = join_wrapped(current[-1], text)
        else:
            current.append(text)
        prev_width = _width(line)
    return "\n\n".join("\n".join(p) for p in paragraphs if p)


def strip_question_refs(text: str) -> str:
    """Drop quoted question titles from cross-references, keeping the section number."""
    return XREF_RE.sub(lambda m: m.group(1) or m.group(2), text)


def parse_sections(text: str) -> list[Section]:
    """Numbered sections of a DocBook text export, from the first chapter to the appendices."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if CHAPTER_RE.match(line)), None)
    if start is None:
        raise ValueError("no 'Chapter N.' line found: not a Debian DocBook text export")
    sections: list[Section] = []
    chapter, current, body = "", None, []
    i = start
    while i < len(lines):
        line = lines[i]
        if END_RE.match(line):
            break
        chap, head = CHAPTER_RE.match(line), HEADING_RE.match(line)
        if (chap or head) and current is not None:
            current.body = unwrap(body)
            sections.append(current)
            current, body = None, []
        if chap:
            chapter = (chap.group(2) or chap.group(4)).replace(NBSP, " ").strip()
        elif head:
            title_lines = [head.group(2)]
            while i + 1 < len(lines) and lines[i + 1].strip():  # titles may wrap
                i += 1
                title_lines.append(lines[i])
            current = Section(head.group(1), unwrap_title(title_lines), chapter, "")
        elif current is not None:
            body.append(line)
        i += 1
    if current is not None:
        current.body = unwrap(body)
        sections.append(current)
    return sections


def unwrap_title(lines: list[str]) -> str:
    out = ""
    for line in lines:
        out = join_wrapped(out, line.replace(NBSP, " ").strip())
    return out


def first_paragraph(text: str) -> str:
    return text.split("\n\n", 1)[0].replace("\n", " ").strip()


def _normalise(text: str) -> str:
    return re.sub(r"\s+", "", text).lower()


def build(faq_text: str, reference_text: str, lang: str, min_question_chars: int = 12) -> Dataset:
    """Turn the FAQ and Reference texts into corpus, queries, qrels and leak checks."""
    ds = Dataset()
    lang_tag = "zh-cn" if lang == "zh" else "en"
    _add_faq(ds, faq_text, lang_tag)
    _add_reference(ds, reference_text, lang_tag)
    ds.checks = _leak_checks(ds, min_question_chars)
    return ds


def _add_faq(ds: Dataset, faq_text: str, lang_tag: str) -> None:
    """Each FAQ answer as a document, its question as a query labelled with it."""
    for s in parse_sections(faq_text):
        answer = strip_question_refs(s.body).strip()
        if not answer:
            continue  # a parent section whose content is in its subsections
        doc_id, query_id = f"faq-{s.number}", f"q-{s.number}"
        meta = {"source": "debian-faq", "section": s.number, "lang": lang_tag, "kind": "faq"}
        ds.corpus.append({"_id": doc_id, "title": s.chapter, "text": answer, "metadata": meta})
        ds.queries.append(
            {
                "_id": query_id,
                "text": s.title,
                "answer": first_paragraph(answer),
                "metadata": {"section": s.number},
            }
        )
        ds.qrels.append((query_id, doc_id, 1))


def _add_reference(ds: Dataset, reference_text: str, lang_tag: str) -> None:
    """Each Debian Reference section as a distractor document."""
    for s in parse_sections(reference_text):
        body = s.body.strip()
        if not body:
            continue
        meta = {
            "source": "debian-reference",
            "section": s.number,
            "lang": lang_tag,
            "kind": "reference",
            "chapter": s.chapter,
        }
        ds.corpus.append(
            {"_id": f"ref-{s.number}", "title": s.title, "text": body, "metadata": meta}
        )


def _leak_checks(ds: Dataset, min_question_chars: int) -> dict[str, int]:
    """Counts, and how many questions (of at least ``min_question_chars``) the indexed text
    holds word for word (it should hold none)."""
    indexed = [_normalise(d["title"] + " " + d["text"]) for d in ds.corpus]
    long_questions = [q for q in ds.queries if len(_normalise(q["text"])) >= min_question_chars]
    leaks = sum(any(_normalise(q["text"]) in doc for doc in indexed) for q in long_questions)
    return {
        "faq_pairs": len(ds.queries),
        "reference_sections": len(ds.corpus) - len(ds.queries),
        "questions_checked": len(long_questions),
        "questions_in_indexed_text": leaks,
    }


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_lines(path, (json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def write(ds: Dataset, out: Path, manifest: dict) -> None:
    """Write the BEIR folder, the ingestable documents and the manifest under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / "corpus.jsonl", ds.corpus)
    _write_jsonl(out / "queries.jsonl", ds.queries)
    qrels = out / "qrels" / "test.tsv"
    qrels.parent.mkdir(exist_ok=True)
    qrels.write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in ds.qrels),
        encoding="utf-8",
    )
    for kind in ("faq", "reference"):
        docs = (
            {"id": d["_id"], "text": d["text"], "metadata": {**d["metadata"], "title": d["title"]}}
            for d in ds.corpus
            if d["metadata"]["kind"] == kind
        )
        _write_jsonl(out / "documents" / f"{kind}.jsonl", docs)
    (out / "manifest.json").write_text(
        json.dumps({**manifest, "checks": ds.checks}, indent=2, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )


def read_text_from_deb(files: dict[str, bytes], wanted: str) -> str:
    """The text of ``wanted`` (a ``.txt.gz`` path) in an unpacked package, by name if moved."""
    data = files.get(wanted)
    if data is None:
        name = Path(wanted).name
        matches = [p for p in files if Path(p).name == name]
        if not matches:
            raise ValueError(f"{wanted} not found in the package")
        data = files[matches[0]]
    return gzip.decompress(data).decode("utf-8") if wanted.endswith(".gz") else data.decode()


def debian_faq(
    lang: str,
    out: Path,
    *,
    work: Path,
    deb_dir: Path | None = None,
    mirror: str | None = None,
    use_apt: bool = True,
) -> dict:
    """Obtain the packages for ``lang``, build the dataset and write it; return the manifest."""
    from eval.datasets.deb import obtain_deb, read_deb

    if lang not in LANGS:
        raise ValueError(f"lang must be one of {', '.join(LANGS)}, got {lang!r}")
    texts, packages = {}, {}
    for kind, (package, path) in PACKAGES[lang].items():
        log.info("obtaining %s", package)
        deb = obtain_deb(package, work, deb_dir=deb_dir, mirror=mirror, use_apt=use_apt)
        texts[kind] = read_text_from_deb(read_deb(deb), path)
        packages[package] = deb.name
    ds = build(texts["faq"], texts["reference"], lang)
    manifest = {
        "dataset": "debian-faq",
        "lang": lang,
        "packages": packages,
        "layout": "beir",
        "documents": ["documents/faq.jsonl", "documents/reference.jsonl"],
    }
    write(ds, out, manifest)
    return {**manifest, "checks": ds.checks}

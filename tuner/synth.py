"""Question/answer pairs mined from indexed chunks: the question rules and the two pair makers.

Two ways to get a question for a chunk. ``extractive_pairs`` uses patterns that suit technical
English documentation ("X is a Y" -> "What is X?", "To do Y, run Z" -> "How do I do Y?",
"X can be configured with Z" -> "How can X be configured?", a section title -> "What is
<title>?"). ``model_pairs`` asks the generator to write a question for a chosen sentence
(greedy, short) and filters what it writes (``good_question``). Either way the answer is a whole
prose sentence of the chunk (``tuner.sentences``, with the command lines it introduces when it
ends with a colon), every pair keeps the chunk id and document id it came from, and pairs are
deduplicated by normalised question. ``tuner.examples`` turns the pairs into training examples.

Knows nothing of the serving prompt, training examples, FAQ questions or any evaluation set: it
reads only indexed text. The extractive patterns are English; a Chinese index yields few
extractive pairs. Everything is deterministic given the seed.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tuner.sentences import sentences

log = logging.getLogger(__name__)

MIN_QUESTION_WORDS = 3
MAX_QUESTION_WORDS = 25
MIN_ANSWER_WORDS = 6
MAX_ANSWER_WORDS = 60
MAX_COPY = 0.6  # a question holding more than this share of the answer's words copies it


def _wordset(words: str) -> frozenset[str]:
    return frozenset(words.split())


STOPWORDS = _wordset(
    "a an the of to in on at for by with from and or but is are was were be been being it its "
    "this that these those as if then than so not no do does did can could may might should "
    "would will shall must you your i my we our they their he she his her what how why which who "
    "whom when where there here about into over under up out also only just more most some any "
    "all each other such very"
)
PRONOUNS = _wordset(
    "it this that these those there they he she you we i here what which who one such its "
    "their his her our your some many most all each both either neither another other"
)
QUESTION_START = re.compile(
    r"^(what|how|why|which|who|whom|whose|when|where|is|are|can|could|does|do|did|should|"
    r"will|would|may|must|has|have)\b",
    re.IGNORECASE,
)
# questions about the exercise itself ("What's the question?", "What does the passage say?")
META_WORDS = re.compile(
    r"\b(passage|text|sentence|paragraph|excerpt|this document|questions?|answers?|topic|"
    r"response)\b",
    re.I,
)
WORD = re.compile(r"[a-z0-9]+")
# a subject noun phrase: 1-6 words, no comma, not starting with a pronoun (checked separately)
SUBJECT = r"(?P<x>[A-Z\"“(][^,;:]{1,60}?)"
DEFINITION = re.compile(SUBJECT + r" (?P<v>is|are) (?P<y>(?:a|an|the|one of|not a|not an) .+)$")
STANDS_FOR = re.compile(SUBJECT + r" (?P<v>stands for|means) (?P<y>.+)$")
USED_FOR = re.compile(SUBJECT + r" (?P<v>is|are|can be) used (?P<p>to|for) (?P<y>.+)$")
PASSIVE_WITH = re.compile(
    SUBJECT + r" (?P<aux>can|should|must|may) be (?P<v>[a-z]+ed) (?:with|by|using|via|from) .+$"
)
TOOL_DOES = re.compile(
    r"^(?P<x>(?:The )?(?:[\w.+-]+\(\d\)(?: command| program| tool| utility)?|"
    r"[\w.+-]+ (?:command|program|tool|utility)))(?: also)? (?P<v>[a-z]+s) (?P<y>.{10,})$"
)
TO_GOAL = re.compile(r"^To (?P<g>[a-z][^,]{4,80}), (?P<rest>.+)$")
IF_WANT = re.compile(r"^If you (?:want|wish|need) to (?P<g>[^,]{4,80}), (?P<rest>.+)$")
USE_TO = re.compile(
    r"^(?:You can |You may |You should |One can )?(?:use|run|type|execute|invoke) "
    r"(?P<tool>.{2,60}?) to (?P<g>[a-z].{4,80})$",
    re.IGNORECASE,
)
PERSON = {"your": "my", "yours": "mine", "yourself": "myself", "you": "me"}
DEICTIC = re.compile(r"\b(it|its|this|that|these|those|them|they|their|above|below)\b", re.I)
NOT_SUBJECT = PRONOUNS | _wordset(
    "since although though when whenever if while because as after before unless once for in "
    "on at by with from to of upon under without during"
)
REFERS_AWAY = re.compile(r"\b(following|followings|as follows|below|above)\b", re.IGNORECASE)
DEFINES = re.compile(r" (is|are) (a|an|the|one of) |\b(stands for|means|refers to)\b")
VAGUE_START = re.compile(r"^(Here|There|This|These|That|Those|It|They|The list|See)\b")
# imperative verbs that open section titles of technical documentation ("Merge two PDF files")
TITLE_VERBS = _wordset(
    "add adjust avoid back boot build change check choose clean compile configure connect convert "
    "copy create customize debug delete disable download edit enable encrypt export extract find "
    "fix get handle install keep list make manage merge migrate monitor mount move recover remove "
    "rename repair replace reset restore run save search secure select send set share show start "
    "stop switch test track trim tune uninstall update upgrade use verify write"
)


@dataclass
class QAPair:
    question: str
    answer: str  # a whole sentence of the source chunk
    chunk_id: int
    doc_id: str
    method: str  # extractive:<pattern> | model
    context: str = ""  # the source chunk's text (the gold passage of a RAFT example)


@dataclass(frozen=True)
class SourceChunk:
    """What synthesis needs of a chunk; ``first`` marks the chunk that opens its document."""

    id: int
    doc_id: str
    text: str
    title: str | None = None
    first: bool = False


# ---- text helpers ------------------------------------------------------------------------
def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def content_words(text: str) -> set[str]:
    return {w for w in words(text) if w not in STOPWORDS and len(w) > 1}


def normalize(question: str) -> str:
    """The key two questions are duplicates under: lowercase words only."""
    return " ".join(words(question))


def copy_share(question: str, answer: str) -> float:
    """Share of the answer's content words that the question repeats (1.0: a copy)."""
    answer_words = content_words(answer)
    if not answer_words:
        return 1.0
    return len(answer_words & content_words(question)) / len(answer_words)


def good_answer(sentence: str) -> bool:
    """A self-contained prose sentence of useful length."""
    first_line = sentence.split("\n", 1)[0]
    n = len(first_line.split())
    if not MIN_ANSWER_WORDS <= n <= MAX_ANSWER_WORDS:
        return False
    if not re.match(r"[A-Z\"“(]", first_line) or first_line[-1] not in ".!:":
        return False
    if "\n" not in sentence and (first_line.endswith(":") or REFERS_AWAY.search(first_line)):
        return False  # introduces or points at something that is not in the sentence
    letters = sum(c.isalpha() for c in first_line)
    return letters / len(first_line) > 0.6


def good_question(question: str, answer: str) -> bool:
    """A real question of sane length that does not copy its answer."""
    n = len(question.split())
    if not question.endswith("?") or not MIN_QUESTION_WORDS <= n <= MAX_QUESTION_WORDS:
        return False
    if not QUESTION_START.match(question) or META_WORDS.search(question) or "!" in question:
        return False
    asked = content_words(question) - {"use", "used", "mean", "stand"}
    if not asked:
        return False
    if normalize(question) in normalize(answer) or copy_share(question, answer) > MAX_COPY:
        return False
    if not asked & content_words(answer):
        return False  # shares no word with its answer: about something else
    return len(content_words(answer) - content_words(question)) >= 2  # the answer adds something


def _second_person(goal: str) -> str:
    return " ".join(PERSON.get(w.lower(), w) for w in goal.rstrip(".!:").split())


def _subject(x: str, text: str) -> str | None:
    x = x.strip()
    if x[:1] in '"“' and x[-1:] in '"”' and x.count('"') <= 2:
        return x  # a quoted name stays quoted
    parts = x.split()
    if not 1 <= len(parts) <= 6 or parts[0].lower() in NOT_SUBJECT or _refers(x):
        return None
    if parts[0][:1].isupper() and parts[0].endswith("ing"):
        return None  # "Reading shell scripts is ...": an activity, not a thing
    return _lower_first(" ".join(parts), text)


def _refers(phrase: str) -> bool:
    """Whether ``phrase`` leans on context ("it", "this one") a question cannot carry."""
    return bool(DEICTIC.search(phrase))


def _lower_first(phrase: str, text: str) -> str:
    """Lowercase a sentence-initial word ("The", "Actions") that the text writes lowercase
    elsewhere; names ("Debian", "GnuPG") keep their case."""
    first, _, rest = phrase.partition(" ")
    if first in ("The", "A", "An") or (
        first[:1].isupper()
        and first[1:].islower()
        and re.search(rf"\b{re.escape(first.lower())}\b", text)
        and not re.search(rf"[a-z,] {re.escape(first)}\b", text)  # capitalised mid-sentence
    ):
        first = first.lower()
    return f"{first} {rest}".strip()


# ---- extractive --------------------------------------------------------------------------
def questions_for(sentence: str, text: str = "") -> list[tuple[str, str]]:
    """(pattern, question) for every pattern that fits ``sentence`` (its first line);
    ``text`` (the chunk) decides whether a sentence-initial word is lowercased."""
    s = sentence.split("\n", 1)[0].rstrip(".!:")
    text = text or sentence
    out: list[tuple[str, str]] = []
    if m := USED_FOR.match(s):
        if x := _subject(m["x"], text):
            verb = "are" if m["v"] == "are" else "is"
            out.append(("used_for", f"What {verb} {x} used for?"))
    elif (m := DEFINITION.match(s)) and (x := _subject(m["x"], text)):
        out.append(("definition", f"What {m['v']} {x}?"))
    if (m := STANDS_FOR.match(s)) and (x := _subject(m["x"], text)):
        verb = "stand for" if m["v"] == "stands for" else "mean"
        out.append(("definition", f"What does {x} {verb}?"))
    if (m := PASSIVE_WITH.match(s)) and (x := _subject(m["x"], text)):
        out.append(("command", f"How {m['aux']} {x} be {m['v']}?"))
    tool = TOOL_DOES.match(s)
    if tool and tool["v"] not in ("is", "has", "was", "does") and (x := _subject(tool["x"], text)):
        out.append(("tool", f"What does {x} do?"))
    for pattern in (TO_GOAL, IF_WANT, USE_TO):
        if (m := pattern.match(s)) and not _refers(m["g"]):
            out.append(("command", f"How can I {_second_person(m['g'])}?"))
            break
    return out


def title_question(title: str, text: str = "") -> str | None:
    """A question from a section title: "How to X"/"Merge X" -> "How do I ...?", a question
    stays one, a short noun phrase -> "What is/are ...?"."""
    t = " ".join(title.split()).rstrip(".:")
    parts = t.split()
    if not 1 <= len(parts) <= 8 or not t[:1].isalpha():
        return None
    if t.endswith("?"):
        return t if QUESTION_START.match(t) else None
    if m := re.match(r"(?i)^how to (.+)$", t):
        return f"How do I {_second_person(m[1])}?"
    if parts[0].lower() in TITLE_VERBS and len(parts) > 1:
        return f"How do I {parts[0].lower()} {_second_person(' '.join(parts[1:]))}?"
    if len(parts) > 6 or parts[0].lower().endswith("ing") or not parts[0][:1].isupper():
        return None
    phrase = _lower_first(t, text or t)
    verb = "are" if parts[-1].endswith("s") and not parts[-1].endswith("ss") else "is"
    return f"What {verb} {phrase}?"


def _chunk_candidates(chunk: SourceChunk, section_title: bool) -> list[QAPair]:
    found: list[QAPair] = []
    answers = [s for s in sentences(chunk.text, prose=True) if good_answer(s)]
    for s in answers:
        for pattern, asked in questions_for(s, chunk.text):
            method = f"extractive:{pattern}"
            found.append(QAPair(asked, s, chunk.id, chunk.doc_id, method, chunk.text))
    if section_title and chunk.first and chunk.title:
        q = title_question(chunk.title, chunk.text)
        topic = content_words(chunk.title)
        for s in answers[:2]:  # the section's opening sentences, if they are about the title
            about = len(topic & content_words(s)) * 2 >= len(topic) and not VAGUE_START.match(s)
            if q and q.startswith("What") and not DEFINES.search(s):
                about = False  # "What is <title>?" wants a definition, not any opening line
            if q and about:
                found.append(QAPair(q, s, chunk.id, chunk.doc_id, "extractive:title", chunk.text))
                break
    return [p for p in found if good_question(p.question, p.answer)]


def extractive_pairs(chunks: Iterable[Any], max_pairs: int, seed: int = 42) -> list[QAPair]:
    """Pattern-made pairs, spread over chunks (one per chunk per round), deduplicated.

    A title counts as a section title only when no other document shares it (a shared title is
    a chapter name, too broad to ask about).
    """
    items = [as_chunk(c) for c in chunks]
    docs_by_title: dict[str, set[str]] = {}
    for c in items:
        if c.title:
            docs_by_title.setdefault(c.title, set()).add(c.doc_id)
    random.Random(seed).shuffle(items)
    per_chunk = [
        _chunk_candidates(c, len(docs_by_title.get(c.title or "", ())) == 1) for c in items
    ]
    ranked = [p for rnd in _rounds(per_chunk) for p in rnd]
    return dedup(ranked)[:max_pairs]


def _rounds(per_chunk: list[list[QAPair]]) -> Iterable[list[QAPair]]:
    depth = max((len(c) for c in per_chunk), default=0)
    for i in range(depth):
        yield [c[i] for c in per_chunk if len(c) > i]


def dedup(pairs: Iterable[QAPair]) -> list[QAPair]:
    """The first pair of each normalised question, in order."""
    seen: set[str] = set()
    out = []
    for p in pairs:
        key = normalize(p.question)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


# ---- model-written -----------------------------------------------------------------------
QUESTION_PROMPT = (
    "Write one short question that the following sentence answers. The question must make "
    "sense without the sentence. Reply with the question only.\n\n"
    "Topic: {title}\nSentence: {answer}"
)


def clean_question(raw: str) -> str | None:
    """The first question in a model's reply, or None if it wrote none."""
    text = raw.strip().split("\n", 1)[0].strip()
    text = re.sub(r"^(?:Q(?:uestion)?\s*\d*\s*[:.)-]\s*|\d+[.)]\s*|[-*]\s*)", "", text).strip()
    text = text.strip("\"'“”` ")
    if "?" not in text:
        return None
    return text[: text.index("?") + 1].strip()


def model_pairs(
    chunks: Iterable[Any],
    generator: Any,
    max_pairs: int,
    seed: int = 42,
    *,
    batch_size: int = 8,
    max_new_tokens: int = 32,
) -> list[QAPair]:
    """Pairs whose question the generator wrote (greedy) for a sentence of the chunk.

    ``generator`` has ``.model`` and ``.tokenizer`` (a ``tuner.models.Generator``). One answer
    sentence per chunk (chosen with ``seed``); replies without a usable question are dropped.
    """
    rng = random.Random(seed)
    items = [as_chunk(c) for c in chunks]
    rng.shuffle(items)
    todo: list[tuple[SourceChunk, str]] = []
    for c in items:
        answers = [s for s in sentences(c.text, prose=True) if good_answer(s)]
        if answers:
            todo.append((c, rng.choice(answers)))
    out: list[QAPair] = []
    seen: set[str] = set()
    prompted = 0
    for i in range(0, len(todo), batch_size):
        if len(out) >= max_pairs:
            break
        batch = todo[i : i + batch_size]
        replies = _generate(generator, [_question_prompt(c, a) for c, a in batch], max_new_tokens)
        prompted += len(batch)
        for (c, answer), reply in zip(batch, replies, strict=True):
            q = clean_question(reply)
            if q is None or not good_question(q, answer) or normalize(q) in seen:
                continue
            seen.add(normalize(q))
            out.append(QAPair(q, answer, c.id, c.doc_id, "model", c.text))
    log.info("model_pairs: %d of %d replies kept", len(out), prompted)
    return out[:max_pairs]


def _question_prompt(chunk: SourceChunk, answer: str) -> list[dict[str, str]]:
    title = chunk.title or "technical documentation"
    return [{"role": "user", "content": QUESTION_PROMPT.format(title=title, answer=answer)}]


def _generate(generator: Any, prompts: list[list[dict[str, str]]], max_new: int) -> list[str]:
    import torch

    tok, model = generator.tokenizer, generator.model
    texts = [
        tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in prompts
    ]
    side, tok.padding_side = tok.padding_side, "left"
    try:
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tok.padding_side = side
    enc = {k: v.to(model.device) for k, v in enc.items()}
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with torch.no_grad():
        out = model.generate(
            **enc, max_new_tokens=max_new, do_sample=False, pad_token_id=pad, num_beams=1
        )  # (batch, prompt + new)
    new = out[:, enc["input_ids"].shape[1] :]
    return [str(t) for t in tok.batch_decode(new, skip_special_tokens=True)]


# ---- from the index ----------------------------------------------------------------------
def as_chunk(c: Any) -> SourceChunk:
    """A ``SourceChunk`` from a store ``ChunkRow``, a ``Hit`` or an (id, doc_id, text) tuple."""
    if isinstance(c, SourceChunk):
        return c
    if isinstance(c, tuple):
        return SourceChunk(int(c[0]), str(c[1]), str(c[2]))
    cid = c.chunk_id if hasattr(c, "chunk_id") else c.id
    meta = getattr(c, "metadata", None) or {}
    title = meta.get("title") if isinstance(meta.get("title"), str) else None
    first = getattr(c, "ordinal", None) == 0 or getattr(c, "start", None) == 0
    return SourceChunk(int(cid), str(c.doc_id), str(c.text), title, first)


def index_chunks(retriever: Any, batch: int = 500) -> list[SourceChunk]:
    """Every live chunk of the retriever's store, with its document's title, in id order."""
    ids, _ = retriever.store.chunk_texts()
    out: list[SourceChunk] = []
    for i in range(0, len(ids), batch):
        rows = retriever.store.chunks(ids[i : i + batch])
        out += [as_chunk(rows[cid]) for cid in ids[i : i + batch] if cid in rows]
    return out


def method_counts(pairs: Iterable[QAPair]) -> dict[str, int]:
    return dict(Counter(p.method for p in pairs))

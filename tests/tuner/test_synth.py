"""Synthetic Q/A from a real (fake-embedder) index: pairs, RAFT and closed-book examples."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retriever.index import DocumentIn, Retriever
from tests.fakes import FakeEmbedder
from tuner import examples as texamples
from tuner import synth
from tuner.config import SyntheticSpec
from tuner.prompts import base_messages, rag_messages

DOCS = {
    "apt": (
        "Package tools",
        "APT is the Advanced Package Tool, an interface to the Debian packaging system. "
        "To install a package from the archive, run apt-get install with its name. "
        "The apt-cache command searches the package lists for a name or a description.",
    ),
    "dpkg": (
        "Low level packaging",
        "The dpkg program is a low level tool that installs and removes single package files. "
        "Configuration files can be preserved with the dpkg option that keeps old conffiles. "
        "If you want to list installed packages, use dpkg with the list option.",
    ),
    "boot": (
        "Boot loaders",
        "GRUB is a boot loader that starts the Linux kernel from the disk at power on. "
        "Use the update-grub command to regenerate the menu of the boot loader. "
        "The kernel command line is edited in the file named grub under the defaults folder.",
    ),
    "shell": (
        "The shell prompt",
        "Bash is the default interactive shell of the Debian system for new users. "
        "To change your login shell, run chsh and give the path of the new shell. "
        "UTF stands for Unicode Transformation Format, an encoding of Unicode text.",
    ),
}


@pytest.fixture
def retriever(tmp_path: Path) -> Iterator[Retriever]:
    r = Retriever(tmp_path / "index", FakeEmbedder())
    r.upsert_many(
        [DocumentIn(text, doc_id, {"title": title}) for doc_id, (title, text) in DOCS.items()]
    )
    yield r
    r.close()


@pytest.fixture
def chunks(retriever: Retriever) -> list[synth.SourceChunk]:
    return synth.index_chunks(retriever)


def test_extractive_pairs_come_from_the_chunks(chunks: list[synth.SourceChunk]) -> None:
    pairs = synth.extractive_pairs(chunks, 100, seed=1)
    by_id = {c.id: c for c in chunks}
    assert len(pairs) >= 6
    questions = {p.question for p in pairs}
    assert "What is APT?" in questions
    assert "How can I install a package from the archive?" in questions
    assert "How can I change my login shell?" in questions
    assert "What does UTF stand for?" in questions
    for p in pairs:
        assert p.answer in by_id[p.chunk_id].text  # a whole sentence of its own chunk
        assert p.doc_id == by_id[p.chunk_id].doc_id and p.context == by_id[p.chunk_id].text
        assert p.question.endswith("?") and synth.good_question(p.question, p.answer)
    keys = [synth.normalize(p.question) for p in pairs]
    assert len(keys) == len(set(keys))
    assert synth.extractive_pairs(chunks, 100, seed=1) == pairs  # deterministic
    assert len(synth.extractive_pairs(chunks, 3, seed=1)) == 3


def test_question_filters() -> None:
    answer = "GRUB is a boot loader that starts the Linux kernel from the disk at power on."
    assert synth.good_question("What is GRUB?", answer)
    assert not synth.good_question("What is it?", answer)  # nothing asked
    assert not synth.good_question("GRUB is a boot loader?", answer)  # no question word
    assert not synth.good_question(answer.rstrip(".") + "?", answer)  # copies the answer
    assert not synth.good_question("What does the passage say about GRUB?", answer)
    assert not synth.good_question("What " + "very " * 30 + "GRUB?", answer)
    assert not synth.good_question("What's the answer to that?", answer)  # seen from SmolLM2
    assert not synth.good_question("What a great question! Can you say more?", answer)
    assert not synth.good_question("What does Debian do?", answer)  # not about the answer
    assert synth.dedup(
        [
            synth.QAPair("What is GRUB?", answer, 1, "d", "x"),
            synth.QAPair("what is  grub ?", answer, 2, "d", "x"),
        ]
    ) == [synth.QAPair("What is GRUB?", answer, 1, "d", "x")]
    assert synth.clean_question("Question: What is GRUB? It is a loader.") == "What is GRUB?"
    assert synth.clean_question("the the kernel kernel") is None
    assert synth.questions_for("It is a tool that does things for the user.") == []


def test_raft_examples(retriever: Retriever, chunks: list[synth.SourceChunk]) -> None:
    pairs = synth.extractive_pairs(chunks, 100, seed=0)
    pairs = (pairs * 10)[:60]  # enough examples to see the gold share
    calls: list[tuple[str, int]] = []

    def search(q: str, k: int) -> list[Any]:
        calls.append((q, k))
        return retriever.search(q, k)

    examples = texamples.raft_examples(pairs, search, distractors=2, p_gold=0.7, seed=3)
    assert len(examples) == len(pairs) and calls
    with_gold = 0
    for pair, ex in zip(pairs, examples, strict=True):
        hits = {h.chunk_id: h for h in retriever.search(pair.question, 6)}
        shown = [
            cid for cid in ex.meta["passage_chunk_ids"] if cid != pair.chunk_id
        ]  # the distractors
        assert len(shown) <= 2 and all(cid in hits for cid in shown)
        passages: list[Any] = [hits[cid] for cid in shown]
        if ex.meta["gold_in_prompt"]:
            with_gold += 1
            gold = synth.SourceChunk(pair.chunk_id, pair.doc_id, pair.context)
            passages.insert(ex.meta["gold_position"], gold)
            assert ex.meta["passage_chunk_ids"][ex.meta["gold_position"]] == pair.chunk_id
        else:
            assert pair.chunk_id not in ex.meta["passage_chunk_ids"]
            assert all(pair.answer not in p.text for p in passages)
        assert ex.messages[:-1] == rag_messages(pair.question, passages)
        assert ex.messages[-1] == {"role": "assistant", "content": pair.answer}
        assert ex.meta["source_chunk_ids"] == [pair.chunk_id]
        assert ex.meta["doc_ids"] == [pair.doc_id]
    assert 0.5 <= with_gold / len(pairs) <= 0.9
    again = texamples.raft_examples(pairs, retriever.search, distractors=2, p_gold=0.7, seed=3)
    assert [e.messages for e in again] == [e.messages for e in examples]
    none = texamples.raft_examples(
        pairs[:5], retriever.search, 2, p_gold=0.0, when_absent="unknown"
    )
    assert all(e.messages[-1]["content"] == texamples.UNKNOWN for e in none)
    assert all(pairs[0].context not in e.messages[0]["content"] for e in none[:1])


def test_closed_book_and_synthesize(retriever: Retriever, tiny_llama: Path) -> None:
    from transformers import AutoTokenizer

    from tuner import data

    pairs = synth.extractive_pairs(synth.index_chunks(retriever), 5, seed=0)
    for pair, ex in zip(pairs, texamples.closed_book_examples(pairs), strict=True):
        assert ex.messages[:-1] == base_messages(pair.question)
        assert "PASSAGE" not in str(ex.messages)
        assert ex.messages[-1]["content"] == pair.answer
    raft = texamples.synthesize(
        retriever, SyntheticSpec(kind="raft", max_examples=4, distractors=1)
    )
    assert len(raft) == 4 and all("gold_in_prompt" in e.meta for e in raft)
    assert all(e.messages[-1]["role"] == "assistant" for e in raft)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    assert data.validate(raft, tokenizer, max_length=2048, min_count=4) == raft  # trainable
    book = texamples.synthesize(retriever, SyntheticSpec(kind="closed_book", max_examples=4))
    assert [e.messages[0]["role"] for e in book] == ["user"] * 4
    with pytest.raises(ValueError, match="generator"):
        texamples.synthesize(retriever, SyntheticSpec(generator="model"))


def test_model_pairs_with_the_tiny_model(tiny_llama: Path, chunks: list[synth.SourceChunk]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gen = _Gen(
        AutoModelForCausalLM.from_pretrained(tiny_llama), AutoTokenizer.from_pretrained(tiny_llama)
    )
    pairs = synth.model_pairs(chunks, gen, max_pairs=4, seed=0, max_new_tokens=8)
    assert all(synth.good_question(p.question, p.answer) for p in pairs)  # random words: junk
    # a model that writes a real question gets it through the same path
    gen.reply = "what is the debian package ? it is"
    pairs = synth.model_pairs(chunks, gen, max_pairs=4, seed=0, max_new_tokens=8)
    assert [p.question for p in pairs] == ["what is the debian package ?"]  # deduplicated
    assert pairs[0].method == "model" and pairs[0].answer in pairs[0].context


class _Gen:
    """The tiny model, optionally forced to reply with a fixed text (as its own tokens)."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.reply: str | None = None
        self._model = model
        self.model = self

    @property
    def device(self) -> Any:
        return self._model.device

    def generate(self, input_ids: Any, **kwargs: Any) -> Any:
        import torch

        out = self._model.generate(input_ids=input_ids, **kwargs)
        if self.reply is None:
            return out
        ids = self.tokenizer(self.reply, add_special_tokens=False, return_tensors="pt").input_ids
        return torch.cat([input_ids, ids.repeat(input_ids.shape[0], 1)], dim=1)


def test_extend_answer_adds_the_following_sentences_up_to_the_word_budget() -> None:
    from tuner.examples import extend_answer

    context = "Apt is a tool. It installs packages for you. It also removes them. Dpkg is lower."
    assert extend_answer("Apt is a tool.", context, 0) == "Apt is a tool."
    assert (
        extend_answer("Apt is a tool.", context, 6)
        == "Apt is a tool. It installs packages for you."
    )
    assert extend_answer("Not in there.", context, 6) == "Not in there."

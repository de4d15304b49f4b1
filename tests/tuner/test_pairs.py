"""Embedder training pairs: user JSONL, pseudo-queries cut from indexed chunks (English and
Chinese), hard negatives mined from a real index."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from retriever.index import DocumentIn, Retriever
from tests.fakes import FakeEmbedder
from tuner.data import DataError
from tuner.pairs import Pair, mine_negatives, pseudo_pairs, read_pairs
from tuner.sentences import sentences
from tuner.synth import index_chunks

DOCS = {
    "apt": "APT installs packages from the archive. It resolves dependencies for you. "
    "The apt-cache tool searches package lists.",
    "grub": "GRUB starts the Linux kernel at boot. Run update-grub to rebuild its menu. "
    "Kernel options live in the defaults file.",
    "zh": "软件包由 APT 安装。它会自动处理依赖关系！使用 apt-cache 可以搜索软件包列表。",
    "shell": "Bash is the default shell. Run chsh to change your login shell.",
    "copy": "APT installs packages from the archive. It resolves dependencies for you.",
}


@pytest.fixture
def retriever(tmp_path: Path) -> Iterator[Retriever]:
    r = Retriever(tmp_path / "index", FakeEmbedder())
    r.upsert_many([DocumentIn(text, doc_id) for doc_id, text in DOCS.items()])
    yield r
    r.close()


def test_read_pairs_reports_every_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    lines = [
        {"query": "how to install", "positive": "apt install", "negatives": ["grub"]},
        {"query": "", "positive": "x"},
        "not json",
        {"query": "q", "positive": "p", "negatives": "no"},
    ]
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    with pytest.raises(DataError) as err:
        read_pairs(path)
    assert [line for line, _ in err.value.problems] == [2, 3, 4]
    path.write_text(json.dumps(lines[0]) + "\n")
    assert read_pairs(path) == [Pair("how to install", "apt install", ["grub"])]


def test_sentences_split_english_and_chinese() -> None:
    assert sentences("A b. C d!") == ["A b.", "C d!"]
    assert sentences("软件包由 APT 安装。它会处理依赖！") == [
        "软件包由 APT 安装。",
        "它会处理依赖！",
    ]


def test_pseudo_pairs_cut_a_sentence_out_of_each_chunk(retriever: Retriever) -> None:
    pairs = pseudo_pairs(index_chunks(retriever), max_pairs=10, seed=1)
    assert {p.doc_id for p in pairs} == set(DOCS)
    for p in pairs:
        text = " ".join(DOCS[p.doc_id].split())
        assert p.query in text and p.query not in p.positive and p.chunk_id is not None
    assert pseudo_pairs(index_chunks(retriever), max_pairs=2, seed=1) == pairs[:2]


def test_mined_negatives_skip_the_positive_and_its_near_duplicates(retriever: Retriever) -> None:
    pairs = [p for p in pseudo_pairs(index_chunks(retriever), 10, seed=3) if p.doc_id == "apt"]
    mined = mine_negatives(
        pairs, lambda q, k: retriever.search(q, k, mode="dense"), n=3, window=(0, 10)
    )
    assert mined  # the loop below checks nothing on no pairs
    for pair in mined:
        assert pair.negatives and len(pair.negatives) <= 3
        assert all("resolves dependencies for you" not in neg for neg in pair.negatives)
    with pytest.raises(ValueError, match="window"):
        mine_negatives(pairs, lambda q, k: [], window=(5, 2))

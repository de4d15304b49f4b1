"""BM25 tokenisation and the live sparse index that follows writes without full rebuilds."""

from __future__ import annotations

import pytest

from retriever.sparse import (
    LiveSparse,
    SparseIndex,
    cjk_bigrams,
    cjk_unigrams,
    cjk_unigrams_bigrams,
    tokenize,
)


def test_tokenize_english_and_chinese() -> None:
    assert tokenize("How do I install packages?") == ["instal", "packag"]
    assert tokenize("如何安装 apt-get") == ["apt-get", "如何", "何安", "安装"]
    assert tokenize("包") == ["包"]


@pytest.mark.parametrize(
    ("text", "bigrams", "unigrams", "both"),
    [
        (
            "安装软件",
            ["安装", "装软", "软件"],
            list("安装软件"),
            ["安", "安装", "装", "装软", "软", "软件", "件"],
        ),
        (
            "ひらがな",
            ["ひら", "らが", "がな"],
            list("ひらがな"),
            ["ひ", "ひら", "ら", "らが", "が", "がな", "な"],
        ),
        ("한국어", ["한국", "국어"], list("한국어"), ["한", "한국", "국", "국어", "어"]),
        ("包", ["包"], ["包"], ["包"]),
    ],
)
def test_cjk_analyses(text: str, bigrams: list[str], unigrams: list[str], both: list[str]) -> None:
    assert tokenize(text, cjk_bigrams) == bigrams
    assert tokenize(text, cjk_unigrams) == unigrams
    assert tokenize(text, cjk_unigrams_bigrams) == both


def test_latin_words_are_the_same_under_every_cjk_analysis() -> None:
    text = "Installing 软件包 with apt-get，然后 Reboot"
    assert tokenize(text, cjk_unigrams) == [
        "instal",
        "apt-get",
        "reboot",
        "软",
        "件",
        "包",
        "然",
        "后",
    ]
    for cjk in (cjk_bigrams, cjk_unigrams_bigrams):
        assert tokenize(text, cjk)[:3] == ["instal", "apt-get", "reboot"]


def test_query_sharing_only_characters_finds_the_document() -> None:
    index = SparseIndex([1, 2], ["安装软件的方法", "今天天气很好"])
    assert [cid for cid, _ in index.search("件软装安", 2)] == [1]  # no bigram in common


def test_bigram_match_ranks_above_a_character_match() -> None:
    index = SparseIndex([1, 2, 3], ["件软装安", "安装软件", "今天天气很好"])
    assert [cid for cid, _ in index.search("安装软件", 3)] == [2, 1]


def test_text_without_cjk_scores_as_one_field() -> None:
    texts = ["install packages with apt", "configure the network", "apt removes packages"]
    one, two = SparseIndex([1, 2, 3], texts, (cjk_bigrams,)), SparseIndex([1, 2, 3], texts)
    assert two.search("apt packages", 3) == one.search("apt packages", 3)


def test_live_sparse_follows_writes_with_few_rebuilds() -> None:
    store = {i: f"base document {i} common" for i in range(1000)}
    live = LiveSparse(lambda: (list(store), list(store.values())), min_delta=50)
    assert live.search("document", 3)  # first search builds the base
    for n in range(40):  # small writes: served from the delta, no rebuild
        cid = 5000 + n
        store[cid] = f"fresh token{n} common"
        live.apply([], [cid], [store[cid]])
        assert live.search(f"token{n}", 1)[0][0] == cid
    live.apply([7], [], [])
    del store[7]
    assert all(c != 7 for c, _ in live.search("base document 7", 50))
    assert live.rebuilds == 1
    for n in range(40, 60):  # the delta passes min_delta: the next search rebuilds the base
        store[5000 + n] = f"fresh token{n}"
        live.apply([], [5000 + n], [store[5000 + n]])
    assert live.search("token59", 1)[0][0] == 5059 and live.rebuilds == 2


def test_removing_a_delta_chunk_forgets_it() -> None:
    live = LiveSparse(lambda: ([1], ["base text"]))
    live.search("base", 1)
    live.apply([], [2], ["delta words"])
    live.apply([2], [], [])
    assert live.search("delta words", 5) == []

"""BM25 tokenisation and the live sparse index that follows writes without full rebuilds."""

from __future__ import annotations

from retriever.sparse import LiveSparse, tokenize


def test_tokenize_english_and_chinese() -> None:
    assert tokenize("How do I install packages?") == ["instal", "packag"]
    assert tokenize("如何安装 apt-get") == ["apt-get", "如何", "何安", "安装"]
    assert tokenize("包") == ["包"]


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

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.datasets.formats import DatasetError, load


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def _beir(folder: Path, with_answers: bool = True) -> Path:
    folder.mkdir()
    _jsonl(
        folder / "corpus.jsonl",
        [
            {"_id": "d1", "title": "Tools", "text": "apt installs packages"},
            {"_id": "d2", "text": "grub boots the system"},
        ],
    )
    queries = [
        {"_id": "q1", "text": "what installs packages?", "answer": "apt"},
        {"_id": "q2", "text": "what boots?", "answer": "grub"},
        {"_id": "q3", "text": "unjudged question"},
    ]
    if not with_answers:
        for q in queries:
            q.pop("answer", None)
    _jsonl(folder / "queries.jsonl", queries)
    (folder / "qrels").mkdir()
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n")
    return folder


def test_beir_folder_keeps_judged_queries_with_answers_and_gold_documents(tmp_path: Path) -> None:
    ds = load(_beir(tmp_path / "beir"))
    assert ds.kind == "beir" and [q.id for q in ds.questions] == ["q1", "q2"]
    assert ds.questions[0].answers == ("apt",) and ds.questions[0].gold_docs == {"d1"}
    assert ds.corpus is not None and ds.corpus[0].metadata == {"title": "Tools"}
    assert ds.has_answers and ds.has_qrels
    assert not load(_beir(tmp_path / "plain", with_answers=False)).has_answers
    assert len(ds.limited(1).questions) == 1


def test_squad_rows_share_identical_contexts(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "s.jsonl",
        [
            {
                "id": "a",
                "context": "apt installs packages",
                "question": "what installs?",
                "answers": {"text": ["apt"], "answer_start": [0]},
            },
            {
                "id": "b",
                "context": "apt installs packages",
                "question": "what does apt do?",
                "answers": ["installs packages", "installs packages"],
            },
        ],
    )
    ds = load(path)
    assert ds.kind == "squad" and ds.corpus is not None and len(ds.corpus) == 1
    assert ds.questions[1].answers == ("installs packages",)
    assert ds.questions[0].gold_docs == ds.questions[1].gold_docs == {ds.corpus[0].id}


def test_plain_qa_needs_live_and_has_no_corpus(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "qa.jsonl", [{"question": "what is apt?", "answer": "a tool"}])
    with pytest.raises(DatasetError, match="--live"):
        load(path)
    ds = load(path, live=True)
    assert ds.kind == "qa" and ds.corpus is None and ds.questions[0].id == "q1"


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["{not json"], r"q.jsonl:1: not JSON"),
        (['{"question": "", "answer": "x"}'], r"q.jsonl:1: 'question' must be a non-empty"),
        (['{"question": "a", "answer": 3}'], "answers must be a string"),
        (['{"question": "a", "doc_ids": "d1"}'], "doc_ids"),
        (['{"id": "x", "question": "a"}', '{"id": "x", "question": "b"}'], "appears twice"),
        (["[1, 2]"], r"q.jsonl:1: a JSON object is expected, got an array"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path: Path, lines: list[str], message: str) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=message):
        load(path, live=True)


def test_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a BEIR folder"):
        load(tmp_path)
    with pytest.raises(DatasetError, match="no such file"):
        load(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DatasetError, match="no rows"):
        load(tmp_path / "empty.jsonl")


def test_a_kept_index_is_brought_to_exactly_the_corpus(tmp_path: Path) -> None:
    from eval.datasets.formats import Doc, EvalSet
    from eval.index_cache import sync_corpus
    from retriever.index import Retriever
    from tests.fakes import FakeEmbedder

    docs = [Doc("a", "apt installs packages"), Doc("b", "grub boots"), Doc("c", "bash shell")]
    index = Retriever(tmp_path / "index", FakeEmbedder())
    try:
        assert sync_corpus(index, EvalSet("beir", tmp_path, [], docs)) == 3
        assert sync_corpus(index, EvalSet("beir", tmp_path, [], docs)) == 0  # nothing embedded
        changed = [docs[0], Doc("b", "grub shows the boot menu"), Doc("d", "dpkg unpacks")]
        assert sync_corpus(index, EvalSet("beir", tmp_path, [], changed)) == 3  # c gone, b, d
        assert sorted(r.id for r in index.store.documents()) == ["a", "b", "d"]
        assert index.get("b").text == "grub shows the boot menu"
    finally:
        index.close()


def test_only_the_most_recently_used_kept_indexes_stay(tmp_path: Path) -> None:
    import os

    from eval.index_cache import prune_indexes
    from retriever.locks import FolderLock

    names = ["new", "mid", "old", "oldest"]
    for name in names:
        (tmp_path / name).mkdir()
    busy = FolderLock(tmp_path / "oldest")
    busy.acquire()  # another run has it open
    for age, name in enumerate(names):
        os.utime(tmp_path / name, (1_000_000 - age * 100, 1_000_000 - age * 100))
    try:
        prune_indexes(tmp_path, keep=1, spare="old")
    finally:
        busy.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "old", "oldest"]

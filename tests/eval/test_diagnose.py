from __future__ import annotations

from eval.answers import citation_scores, cited, groundedness, holds_answer, strip_markers
from eval.diagnose import diagnose, failure, is_wrong, refused
from eval.metrics import ndcg_at


def test_failure_classes() -> None:
    assert failure(gold_in_prompt=True, grounded=0.9, refused=False) == "generation"
    assert failure(gold_in_prompt=False, grounded=0.8, refused=False) == "retrieval"
    assert failure(gold_in_prompt=False, grounded=0.1, refused=True) == "retrieval"
    assert failure(gold_in_prompt=False, grounded=0.1, refused=False) == "both"
    assert refused("I don't know from these passages.") and not refused("apt installs it")


def test_wrong_needs_a_gold_answer() -> None:
    assert is_wrong({"token_f1": 0.2, "exact_match": 0.0}, 0.5) is True
    assert is_wrong({"token_f1": 0.2, "exact_match": 1.0}, 0.5) is False
    assert is_wrong({"token_f1": 0.7, "exact_match": 0.0}, 0.5) is False
    assert is_wrong({"groundedness": 0.3}, 0.5) is None


def test_weak_component_and_action() -> None:
    gen = diagnose("rag", ["generation"] * 8 + ["retrieval"] * 2 + [None] * 5, 15, "rule")
    assert gen["weak"] == "generator" and gen["wrong"] == 10
    assert gen["commands"] == ["ragtune tune --recipe configs/raft-hybrid.yaml"]
    ret = diagnose("rag", ["retrieval"] * 7 + ["generation"] * 3, 10, "rule")
    assert ret["weak"] == "retriever" and "retriever-pairs" in ret["recipes"][0]
    both = diagnose("rag", ["both"] * 3 + ["generation"] * 3 + ["retrieval"] * 3, 9, "rule")
    assert both["weak"] == "both" and len(both["recipes"]) == 2
    assert diagnose("rag", [None, None], 2, "rule")["weak"] == "none"


def test_citations_groundedness_and_answer_in_passages() -> None:
    assert cited("see [2] and [1], also [2] and [9]", 3) == [2, 1]
    assert strip_markers("apt [1] installs").split() == ["apt", "installs"]
    passages = ["apt installs packages from the debian archive"]
    assert groundedness("apt installs packages [1]", passages) == 1.0
    assert groundedness("the kernel boots quickly", passages) == 0.0
    assert groundedness("is the", passages) is None  # nothing but function words
    assert groundedness("apt", []) is None
    assert citation_scores(["d1", "d2"], frozenset({"d1"})) == {
        "citation_precision": 0.5,
        "citation_recall": 1.0,
    }
    assert citation_scores([], frozenset({"d1"}))["citation_precision"] is None
    assert holds_answer(passages, ["Debian archive"])
    assert not holds_answer(passages, ["grub"])
    long_gold = "packages come from the debian archive through apt mirrors worldwide"
    assert holds_answer(passages, [long_gold])  # most of its content words are there
    assert holds_answer(["安装软件包的工具是apt"], ["软件包"])


def test_ndcg() -> None:
    assert ndcg_at(["a", "b"], {"a"}) == 1.0
    assert 0 < ndcg_at(["b", "a"], {"a"}) < 1.0
    assert ndcg_at(["b", "c"], {"a"}) == 0.0

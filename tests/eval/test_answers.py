from __future__ import annotations

import pytest

from eval.answers import rouge_l, token_f1, tokens


def test_tokens_normalise_case_punctuation_articles_and_cjk() -> None:
    assert tokens("The APT tool, an installer!") == ["apt", "tool", "installer"]
    assert tokens("安装软件包。") == ["安", "装", "软", "件", "包"]


def test_token_f1() -> None:
    assert token_f1("apt installs packages", "apt installs packages") == 1.0
    assert token_f1("nothing alike", "apt installs packages") == 0.0
    assert token_f1("apt installs", "apt installs packages") == pytest.approx(0.8)


def test_rouge_l_rewards_order() -> None:
    assert rouge_l("a b c d", "a b c d") == 1.0
    in_order = rouge_l("apt then dpkg then install", "apt dpkg install")
    shuffled = rouge_l("install then dpkg then apt", "apt dpkg install")
    assert in_order > shuffled > 0

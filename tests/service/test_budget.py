"""The token budget: the templated prompt fits ``max_prompt_tokens`` and, with the answer, the
model's context (the tiny Llama reads 256 tokens); passages that do not fit are dropped or cut
short and only what the prompt holds is cited; user text alone over the budget is a 422 with
the count."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from service.app import create_app
from service.pipeline import Ask
from service.settings import Limits, Settings
from tests.helpers import WORDS, tiny_loader

CONTEXT = 256  # the tiny Llama's max_position_embeddings
QUESTION = "what is the debian package system ?"


def _text(seed: int, words: int = 60) -> str:
    """A passage of vocabulary words (one token each for the tiny tokenizer)."""
    return " ".join(WORDS[(seed * 7 + i * 3) % len(WORDS)] for i in range(words))


DOCS = [{"id": f"d{i}", "text": _text(i) + " debian package ."} for i in range(6)]


@contextmanager
def _client(tiny_llama: Path, tmp_path: Path, **limits: Any) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path / "data", generator=str(tiny_llama), limits=Limits(**limits)
    )
    app = create_app(settings, loader=tiny_loader(tiny_llama, tmp_path))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert client.post("/v1/documents", json={"documents": DOCS}).status_code == 201
        yield client


def _state(client: TestClient) -> Any:
    return client.app.state.ragtune  # type: ignore[attr-defined]


def test_passages_over_the_budget_are_dropped_and_only_the_shown_are_cited(
    tiny_llama: Path, tmp_path: Path
) -> None:
    with _client(tiny_llama, tmp_path, max_prompt_tokens=150) as client:
        pipeline = _state(client).pipeline()
        ranked = pipeline.search(Ask.question(QUESTION, k=6))
        assert len(ranked) == 6
        prepared = pipeline.prepare(Ask.question(QUESTION, k=6, max_new_tokens=4))
        tokens = len(_state(client).engine.encode_chat(prepared.prompt))
        assert tokens <= 150
        kept = prepared.hits
        assert 1 <= len(kept) < 6
        context = prepared.prompt[0]["content"]
        for shown, full in zip(kept, ranked, strict=False):  # the best-ranked are kept
            assert (shown.doc_id, shown.start) == (full.doc_id, full.start)
            assert full.text.startswith(shown.text) and shown.end == shown.start + len(shown.text)
            assert shown.text in context
        for dropped in ranked[len(kept) :]:
            assert f"source={dropped.doc_id}\n" not in context

        r = client.post("/v1/query", json={"question": QUESTION, "k": 6, "max_new_tokens": 4})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["usage"]["prompt_tokens"] == tokens
        assert [c["doc_id"] for c in body["citations"]] == [h.doc_id for h in kept]
        assert [c["end"] for c in body["citations"]] == [h.end for h in kept]


def test_a_passage_that_half_fits_is_cut_short_with_its_span(
    tiny_llama: Path, tmp_path: Path
) -> None:
    with _client(tiny_llama, tmp_path) as client:
        pipeline = _state(client).pipeline()
        encode = _state(client).engine.encode_chat
        one = pipeline.search(Ask.question(QUESTION, k=1))[0]
        bare = len(encode(pipeline.given(Ask.question(QUESTION), [], None, 4).prompt))
        pipeline.limits = Limits(max_prompt_tokens=bare + 20)  # room for part of one passage
        prepared = pipeline.prepare(Ask.question(QUESTION, k=1, max_new_tokens=4))
        (cut,) = prepared.hits
        assert cut.doc_id == one.doc_id and cut.start == one.start
        assert 0 < len(cut.text) < len(one.text) and one.text.startswith(cut.text)
        assert cut.end == cut.start + len(cut.text) < one.end
        assert len(encode(prepared.prompt)) <= bare + 20


def test_k_at_its_limit_never_overflows_the_models_context(
    tiny_llama: Path, tmp_path: Path
) -> None:
    with _client(tiny_llama, tmp_path) as client:  # the default budget (2048) > the context
        ask = {"question": QUESTION, "k": 50, "max_new_tokens": 16}
        r = client.post("/v1/query", json=ask)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["usage"]["prompt_tokens"] + 16 <= CONTEXT
        assert 1 <= len(body["citations"]) < len(DOCS)
        r = client.post("/v1/query", json={**ask, "max_new_tokens": CONTEXT + 10})
        assert r.status_code == 422 and r.json()["error"]["code"] == "max_new_tokens_too_large"
        assert str(CONTEXT) in r.json()["error"]["message"]
        msgs = [{"role": "user", "content": QUESTION}]  # chat's default answer: 256 tokens
        chat = {"model": _state(client).settings.generator, "messages": msgs}
        r = client.post("/v1/chat/completions", json={**chat, "retrieval": {"k": 50}})
        assert r.status_code == 200, r.text
        used = r.json()["usage"]
        assert used["prompt_tokens"] + CONTEXT // 2 <= CONTEXT and used["completion_tokens"] >= 1


def test_user_text_over_the_budget_is_422_with_the_count(tiny_llama: Path, tmp_path: Path) -> None:
    long = " ".join(["debian"] * 120)
    with _client(tiny_llama, tmp_path, max_prompt_tokens=100) as client:
        encode = _state(client).engine.encode_chat
        r = client.post("/v1/query", json={"question": long, "mode": "base"})
        assert r.status_code == 422
        error = r.json()["error"]
        count = len(encode([{"role": "user", "content": long}]))
        assert error["code"] == "question_too_long" and error["message"].startswith("question")
        assert f"{count} tokens" in error["message"] and "100" in error["message"]
        assert error["details"] == {
            "loc": ["body", "question"],
            "prompt_tokens": count,
            "budget": 100,
        }

        msgs = [{"role": "user", "content": " ".join(["apt"] * 40)}] * 3
        chat = {"model": _state(client).settings.generator, "messages": msgs, "max_tokens": 4}
        r = client.post("/v1/chat/completions", json=chat)
        assert r.status_code == 422
        error = r.json()["error"]
        assert error["code"] == "messages_too_long" and "messages" in error["message"]
        assert error["details"]["prompt_tokens"] > 100


def test_too_many_messages_is_422_naming_messages(tiny_llama: Path, tmp_path: Path) -> None:
    with _client(tiny_llama, tmp_path, max_messages=3) as client:
        msgs = [{"role": "user", "content": "what is apt ?"}] * 4
        chat = {"model": _state(client).settings.generator, "messages": msgs, "max_tokens": 2}
        r = client.post("/v1/chat/completions", json={**chat, "retrieval": False})
        assert r.status_code == 422
        assert r.json()["error"]["code"] == "messages_too_many"
        assert "messages" in r.json()["error"]["message"] and "3" in r.json()["error"]["message"]
        r = client.post("/v1/chat/completions", json={**chat, "messages": msgs[:3]})
        assert r.status_code == 200, r.text


def test_ragtune_ask_fits_the_budget_too(tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.cli import main

    monkeypatch.setenv("RAGTUNE_GENERATOR", str(tiny_llama))
    monkeypatch.setenv("RAGTUNE_LIMITS__MAX_PROMPT_TOKENS", "30")
    result = CliRunner().invoke(main, ["ask", " ".join(["debian"] * 40), "--mode", "base"])
    assert result.exit_code != 0
    assert "tokens" in result.output and "30" in result.output


def test_the_eval_harness_prompt_fits_the_context_too(tiny_llama: Path, tmp_path: Path) -> None:
    with _client(tiny_llama, tmp_path) as client:
        pipeline = _state(client).pipeline()
        ranked = pipeline.search(Ask.question(QUESTION, k=6))
        prepared = pipeline.given(Ask.question(QUESTION), ranked, None, 16)
        assert len(_state(client).engine.encode_chat(prepared.prompt)) + 16 <= CONTEXT
        assert 1 <= len(prepared.hits) < len(ranked)  # what the prompt holds, nothing more
        assert all(h.text in prepared.prompt[0]["content"] for h in prepared.hits)


def test_an_answer_too_long_for_the_context_is_blamed_on_its_length(
    tiny_llama: Path, tmp_path: Path
) -> None:
    question = " ".join(["debian"] * 60)  # fits max_prompt_tokens, not next to 200 new tokens
    with _client(tiny_llama, tmp_path) as client:
        bare = len(_state(client).engine.encode_chat([{"role": "user", "content": question}]))
        r = client.post(
            "/v1/query", json={"question": question, "mode": "base", "max_new_tokens": 200}
        )
        assert r.status_code == 422
        error = r.json()["error"]
        assert error["code"] == "max_new_tokens_too_large"
        assert (
            error["message"].startswith("max_new_tokens")
            and f"{CONTEXT - bare}" in error["message"]
        )
        assert error["details"] == {
            "loc": ["body", "max_new_tokens"],
            "prompt_tokens": bare,
            "max_new_tokens": CONTEXT - bare,
        }
        msgs = [{"role": "user", "content": question}]
        chat = {"model": _state(client).settings.generator, "messages": msgs, "max_tokens": 200}
        r = client.post("/v1/chat/completions", json={**chat, "retrieval": False})
        assert r.status_code == 422 and r.json()["error"]["code"] == "max_tokens_too_large"


def test_a_prompt_learning_adapter_s_virtual_tokens_take_part_of_the_context(
    tiny_llama: Path, tmp_path: Path
) -> None:
    import json

    from service.adapters import AdapterSet
    from service.pipeline import Pipeline

    folder = tmp_path / "adapters" / "prompted"
    folder.mkdir(parents=True)
    config = {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 100, "task_type": "CAUSAL_LM"}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    (folder / "adapter_model.safetensors").write_bytes(b"")  # never loaded here
    with _client(tiny_llama, tmp_path) as client:
        state = _state(client)
        adapters = AdapterSet(state.generator, tmp_path / "adapters")
        assert adapters.virtual_tokens("prompted") == 100
        state.engine.adapters = adapters  # as the eval harness's engine has its set
        ranked = state.pipeline().search(Ask.question(QUESTION, k=6))
        pipeline = Pipeline(state.settings.limits, engine=state.engine)
        prepared = pipeline.given(Ask.question(QUESTION, mode="hybrid"), ranked, "prompted", 16)
        assert len(state.engine.encode_chat(prepared.prompt)) + 100 + 16 <= CONTEXT
        plain = pipeline.given(Ask.question(QUESTION, mode="rag"), ranked, None, 16)
        assert len(prepared.hits) < len(plain.hits) or prepared.hits[-1].end < plain.hits[-1].end
        state.engine.adapters = None


def test_the_eval_harness_cuts_a_question_over_the_context_to_the_longest_start_that_fits(
    tiny_llama: Path, tmp_path: Path
) -> None:
    """A question whose prompt is over the context even with no passages was a 422 that
    failed a whole eval run; with ``cut`` it is cut from its end, just short of overflowing."""
    from service.errors import ServiceError

    long_q = " ".join(["debian"] * 300)
    with _client(tiny_llama, tmp_path) as client:
        pipeline = _state(client).pipeline()
        ranked = pipeline.search(Ask.question(QUESTION, k=3))
        with pytest.raises(ServiceError) as refused:
            pipeline.given(Ask.question(long_q, mode="rag"), ranked, None, 16)
        assert refused.value.status == 422
        prepared = pipeline.given(Ask.question(long_q, mode="rag"), ranked, None, 16, cut=True)
        asked = prepared.ask.query or ""
        assert 0 < len(asked) < len(long_q) and long_q.startswith(asked)
        assert len(_state(client).engine.encode_chat(prepared.prompt)) + 16 <= CONTEXT
        assert prepared.hits == [] and prepared.max_new_tokens == 16
        with pytest.raises(ServiceError):  # one more character would not fit
            pipeline.given(Ask.question(long_q[: len(asked) + 1], mode="rag"), [], None, 16)
        short = pipeline.given(Ask.question(QUESTION, mode="rag"), ranked, None, 16, cut=True)
        assert short.ask.query == QUESTION and short.hits  # a question that fits is left whole

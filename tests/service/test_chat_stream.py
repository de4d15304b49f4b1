"""Streaming answers and the OpenAI-compatible API, driven by the official openai client against
a real uvicorn server on a free loopback port."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.settings import ApiKey, Settings
from tests.helpers import serve_on_loopback, tiny_loader

KEY = "chat-test-key-0123456789"


@pytest.fixture(scope="module")
def server(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("srv")

    settings = Settings(
        auth_disabled=False,
        generator=str(tiny_llama),
        api_keys=[ApiKey(name="t", key=KEY, scopes=["write"])],  # type: ignore[arg-type,list-item]
    )
    base, srv = serve_on_loopback(create_app(settings, loader=tiny_loader(tiny_llama, tmp)))
    headers = {"Authorization": f"Bearer {KEY}"}
    httpx.post(
        f"{base}/v1/documents",
        headers=headers,
        json={"id": "apt", "text": "to install a package on debian use apt install"},
    )
    yield base, str(tiny_llama), srv
    srv.should_exit = True  # type: ignore[attr-defined]


def test_query_streams_tokens_then_citations(server) -> None:
    base = server[0]
    events = []
    with httpx.stream(
        "POST",
        f"{base}/v1/query",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"question": "how to install a package ?", "stream": True, "max_new_tokens": 6},
        timeout=60,
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for block in r.iter_text():
            events.append(block)
    text = "".join(events)
    tokens = [
        json.loads(line[6:])["text"]
        for line in text.splitlines()
        if line.startswith("data: ") and '"text"' in line and "citations" not in line
    ]
    done = json.loads(text.split("event: done\ndata: ")[1].split("\n")[0])
    assert len(tokens) >= 2 and "".join(tokens).strip() == done["answer"]
    assert done["citations"][0]["doc_id"] == "apt" and done["usage"]["completion_tokens"] == 6


def test_openai_client_chat_plain_and_streamed(server) -> None:
    from openai import OpenAI

    base, model = server[0], server[1]
    client = OpenAI(base_url=f"{base}/v1", api_key=KEY)
    assert [m.id for m in client.models.list().data] == [Path(model).name]  # never a folder
    out = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "how to install a package ?"}],
        max_tokens=5,
    )
    assert out.choices[0].message.role == "assistant" and out.usage.completion_tokens == 5
    assert out.model_extra["citations"][0]["doc_id"] == "apt"
    pieces, final = [], None
    for chunk in client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "how to install a package ?"}],
        max_tokens=5,
        stream=True,
    ):
        if chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.choices[0].finish_reason:
            final = chunk
    assert "".join(pieces).strip() == out.choices[0].message.content
    assert final is not None and final.choices[0].finish_reason == "length"
    no_rag = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=2,
        extra_body={"retrieval": False},
    )
    assert no_rag.model_extra["citations"] == []


def test_openai_client_errors(server) -> None:
    import openai

    base = server[0]
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
    bad = openai.OpenAI(base_url=f"{base}/v1", api_key="wrong-key-0123456789")
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_cli_ask_against_the_running_server(server) -> None:
    from click.testing import CliRunner

    from service.cli import main

    base = server[0]
    out = CliRunner().invoke(
        main,
        [
            "ask",
            "how to install a package ?",
            "--server",
            base,
            "--api-key",
            KEY,
            "--max-new-tokens",
            "3",
        ],
    )
    assert out.exit_code == 0, out.output
    assert "[1] apt [" in out.stdout
    denied = CliRunner().invoke(main, ["ask", "x", "--server", base, "--api-key", "nope"])
    assert denied.exit_code == 1 and "server answered 401" in denied.output


def test_a_client_that_disconnects_mid_stream_cancels_its_job(server) -> None:
    base, _, srv = server
    engine = srv.config.app.state.ragtune.engine
    submitted = []
    original = engine.submit

    def spy(*args: object, **kwargs: object):
        job = original(*args, **kwargs)
        submitted.append(job)
        return job

    engine.submit = spy
    try:
        with httpx.stream(
            "POST",
            f"{base}/v1/query",
            headers={"Authorization": f"Bearer {KEY}"},
            json={
                "question": "tell me everything",
                "mode": "base",
                "stream": True,
                "max_new_tokens": 200,  # the tiny model's context is 256 tokens
            },
            timeout=60,
        ) as r:
            assert r.status_code == 200
            next(r.iter_lines())  # the first event arrived; now hang up
    finally:
        engine.submit = original
    job = submitted[0]
    assert job.done.wait(30)
    assert job.finish_reason == "cancelled" and len(job.tokens) < 200

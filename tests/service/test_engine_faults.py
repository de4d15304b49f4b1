"""Fault isolation in the generation engine: a request whose sampling, prefill or share of a
batched forward fails ends with an error of its own, the rest of its batch finishes with the
text each would have had alone, and the engine keeps serving. Also what submit refuses before
a request can reach a batch, and the same isolation through the HTTP app."""

from __future__ import annotations

import functools
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from service.generation import engine as engine_module
from service.generation.engine import GenerationEngine
from service.generation.reference import complete
from service.generation.request import GenerationFailed
from tests.helpers import PROMPTS, msgs


def _alone(gen, n: int) -> list[str]:  # noqa: ANN001 - tuner.models.Generator
    return [complete(gen, msgs(q), n).text for q in PROMPTS]


def _failed_cleanly(job: Any) -> str:
    """The failed job's message: one line, no traceback, nothing of the injected fault."""
    with pytest.raises(GenerationFailed) as info:
        job.wait(60)
    message = str(info.value)
    assert job.finish_reason == "error" and job.done.is_set()
    assert "\n" not in message and "Traceback" not in message and "/secret" not in message
    return message


def _wrap_forward(monkeypatch: pytest.MonkeyPatch, model: Any, fault: Any) -> None:
    """Make ``model``'s forward call ``fault(input_ids)`` first (it may raise)."""
    real = model.forward

    @functools.wraps(real)  # the engine reads the cache argument's name from the signature
    def forward(*args: Any, **kwargs: Any) -> Any:
        fault(kwargs["input_ids"])
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "forward", forward)


def test_a_request_whose_sampling_fails_mid_batch_fails_alone(
    gen, engine: GenerationEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = _alone(gen, 12)
    real, calls = engine_module.pick, []

    def pick(logits: Any, temperature: float, generator: Any) -> Any:
        if temperature == 0.5:  # only the bad request samples
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("injected fault in /secret/sampling.py")
        return real(logits, temperature, generator)

    monkeypatch.setattr(engine_module, "pick", pick)
    jobs = [engine.submit(msgs(q), 12) for q in PROMPTS[:2]]
    bad = engine.submit(msgs(PROMPTS[2]), 12, temperature=0.5, seed=1)
    jobs += [engine.submit(msgs(q), 12) for q in PROMPTS[2:]]
    _failed_cleanly(bad)
    assert len(bad.tokens) == 2  # it decoded two tokens, then its third step failed
    assert [j.wait(60).text.strip() for j in jobs] == expected
    assert engine.submit(msgs(PROMPTS[0]), 12).wait(60).text.strip() == expected[0]


def test_a_request_whose_stop_check_fails_fails_alone(
    gen, engine: GenerationEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = _alone(gen, 10)
    decode, calls = gen.tokenizer.decode, []

    def faulty(ids: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 7:
            raise RuntimeError("injected fault in /secret/tokenizer.py")
        return decode(ids, *args, **kwargs)

    monkeypatch.setattr(gen.tokenizer, "decode", faulty)
    jobs = [engine.submit(msgs(q), 10) for q in PROMPTS]
    failed = [j for j in jobs if not _succeeded(j)]
    assert len(failed) == 1
    _failed_cleanly(failed[0])
    for job, text in zip(jobs, expected, strict=True):
        if job is not failed[0]:
            assert job.text.strip() == text


def _succeeded(job: Any) -> bool:
    job.done.wait(60)
    return job.error is None


def test_a_prompt_whose_prefill_fails_fails_alone_and_the_running_batch_goes_on(
    gen, engine: GenerationEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The poisoned prompt and a healthy one join a running batch; a prefill holding the
    poisoned prompt fails (if the two board together, each is retried alone): the healthy one
    and the running one finish as if alone."""
    poison = gen.tokenizer.convert_tokens_to_ids("paris")

    def fault(ids: Any) -> None:
        if ids.shape[1] > 1 and bool((ids == poison).any()):
            raise RuntimeError("injected fault in /secret/prefill.py")

    _wrap_forward(monkeypatch, gen.model, fault)
    long_expected = complete(gen, msgs(PROMPTS[0]), 80).text
    short_expected = complete(gen, msgs(PROMPTS[1]), 6).text
    running = engine.submit(msgs(PROMPTS[0]), 80)
    while len(running.tokens) < 3:
        assert not running.done.wait(0.001), "it finished before anything could join it"
    bad = engine.submit(msgs("what is the capital of france ? paris"), 6)
    late = engine.submit(msgs(PROMPTS[1]), 6)
    _failed_cleanly(bad)
    assert late.wait(60).text.strip() == short_expected
    assert running.wait(60).text.strip() == long_expected


def test_a_batched_forward_that_fails_mid_decode_is_retried_without_losing_anyone(
    gen, engine: GenerationEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = _alone(gen, 12)
    steps: list[int] = []

    def fault(ids: Any) -> None:
        if ids.shape[0] > 1 and ids.shape[1] == 1:  # a decode step of several rows
            steps.append(1)
            if len(steps) == 3:
                raise RuntimeError("injected fault in /secret/forward.py")

    _wrap_forward(monkeypatch, gen.model, fault)
    jobs = [engine.submit(msgs(q), 12) for q in PROMPTS]
    assert [j.wait(60).text.strip() for j in jobs] == expected
    assert len(steps) > 3  # the batch decoded on after the failed step


def test_a_forward_that_keeps_failing_fails_only_the_request_it_fails_for(
    gen, engine: GenerationEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the bad request is in the batch every step fails, and so does its prefill when it
    is retried alone: it is the only request that fails; the others are rebuilt and go on."""
    poison = gen.tokenizer.convert_tokens_to_ids("paris")
    armed: list[int] = []

    def fault(ids: Any) -> None:
        if ids.shape == (len(PROMPTS) + 1, 1):  # a step of all five rows
            armed.append(1)
            raise RuntimeError("injected fault in /secret/forward.py")
        if armed and ids.shape[1] > 1 and bool((ids == poison).any()):
            raise RuntimeError("injected fault in /secret/forward.py")

    n = 40  # steps of slack for the bad request to join while all four still decode
    expected = _alone(gen, n)
    assert not any("paris" in text for text in expected)
    _wrap_forward(monkeypatch, gen.model, fault)
    jobs = [engine.submit(msgs(q), n) for q in PROMPTS]
    while any(len(j.tokens) < 2 for j in jobs):
        assert not any(j.done.wait(0.001) for j in jobs)
    bad = engine.submit(msgs("paris paris paris"), 10)
    _failed_cleanly(bad)
    assert armed, "the bad request never decoded with the others"
    assert [j.wait(60).text.strip() for j in jobs] == expected


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"seed": 2**64}, "seed"),
        ({"seed": -(2**63) - 1}, "seed"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"stop": ["ok", 3]}, "stop"),
    ],
)
def test_submit_refuses_what_would_fail_inside_a_batch(
    engine: GenerationEngine, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        engine.submit(msgs(PROMPTS[0]), 4, **kwargs)
    assert engine.queue_depth() == 0
    assert engine.submit(msgs(PROMPTS[0]), 4, seed=2**64 - 1, temperature=1.0).wait(60).tokens


def test_the_engine_thread_survives_a_fault_outside_any_request(gen) -> None:
    class Adapters:  # an adapter switch that fails once
        change_waiting = False
        generation = 0
        failures = 1

        def loaded(self) -> list[str]:
            return ["x"]

        def active(self, name: str | None) -> Any:
            import contextlib

            if self.failures:
                self.failures -= 1
                raise RuntimeError("injected fault in /secret/adapters.py")
            return contextlib.nullcontext()

    engine = GenerationEngine(gen, max_batch=4, adapters=Adapters())
    try:
        _failed_cleanly(engine.submit(msgs(PROMPTS[0]), 4, adapter="x"))
        assert engine.submit(msgs(PROMPTS[0]), 4, adapter="x").wait(60).tokens
    finally:
        engine.close()


def test_a_chat_that_fails_in_the_engine_fails_alone_over_http(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's report: a chat that raised inside the engine (then a seed of 2**64) while
    another decoded failed the whole batch with 500. Now the healthy chat gets its 200; the
    failing one gets a one-line 500 of its own; the seed is refused before it reaches a batch."""
    from service.settings import Settings
    from tests.helpers import app_clients

    real = engine_module.pick

    def pick(logits: Any, temperature: float, generator: Any) -> Any:
        if temperature == 0.7:
            raise RuntimeError("injected fault in /secret/sampling.py")
        return real(logits, temperature, generator)

    monkeypatch.setattr(engine_module, "pick", pick)
    with app_clients(tiny_llama, tmp_path) as make:
        client = make(Settings())
        engine = client.app.state.ragtune.engine  # type: ignore[attr-defined]
        model = client.get("/v1/models").json()["data"][0]["id"]
        body = {"model": model, "retrieval": False, "messages": [{"role": "user", "content": "hi"}]}
        started: list[Any] = []
        original = engine.submit

        def spy(*args: Any, **kwargs: Any) -> Any:
            started.append(original(*args, **kwargs))
            return started[-1]

        monkeypatch.setattr(engine, "submit", spy)
        healthy: dict[str, Any] = {}
        thread = threading.Thread(
            target=lambda: healthy.update(
                r=client.post("/v1/chat/completions", json={**body, "max_tokens": 200})
            )
        )
        thread.start()
        while not (started and len(started[0].tokens) >= 2):
            assert not (started and started[0].done.is_set()), "it finished before the others"
            threading.Event().wait(0.001)
        failing = client.post(
            "/v1/chat/completions", json={**body, "max_tokens": 5, "temperature": 0.7}
        )
        seeded = client.post(
            "/v1/chat/completions", json={**body, "max_tokens": 2, "seed": 18446744073709551616}
        )
        thread.join(60)
    assert started[1].finished_at < started[0].finished_at  # it failed while the other ran
    assert healthy["r"].status_code == 200, healthy["r"].text
    assert healthy["r"].json()["usage"]["completion_tokens"] == 200
    assert failing.status_code == 500
    error = failing.json()["error"]
    assert error["code"] == "generation_failed"
    assert "\n" not in error["message"] and "/" not in error["message"]
    assert seeded.status_code == 422 and "seed" in seeded.text


def test_a_stream_whose_job_fails_ends_with_an_error_event(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure after the response started cannot change its status: the stream ends with an
    error event of the one-line message (chat: an OpenAI error chunk, then [DONE]) instead of a
    dropped connection."""
    from service.settings import Settings
    from tests.helpers import app_clients

    real = engine_module.pick
    calls = {"n": 0}

    def pick(logits: Any, temperature: float, generator: Any) -> Any:
        calls["n"] += 1
        if calls["n"] % 4 == 0:  # a few tokens stream out first
            raise RuntimeError("injected fault in /secret/sampling.py")
        return real(logits, temperature, generator)

    monkeypatch.setattr(engine_module, "pick", pick)
    with app_clients(tiny_llama, tmp_path) as make:
        client = make(Settings())
        model = client.get("/v1/models").json()["data"][0]["id"]
        chat = client.post(
            "/v1/chat/completions",
            json={
                "model": model,
                "retrieval": False,
                "stream": True,
                "max_tokens": 20,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
        query = client.post(
            "/v1/query",
            json={"question": "hi", "mode": "base", "stream": True, "max_new_tokens": 20},
        )
    assert chat.status_code == 200
    events = [line[6:] for line in chat.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "generation_failed" and "/" not in error["message"]
    assert query.status_code == 200
    assert "event: error" in query.text and "event: done" not in query.text
    assert "generation_failed" in query.text and "/secret" not in query.text

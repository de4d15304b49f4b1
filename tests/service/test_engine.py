"""The batching engine: batched greedy decoding equals one-at-a-time generate; streaming, stop
strings, token budgets and cancellation."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from service.engine import Engine
from service.generate import complete
from tuner.models import load_generator

PROMPTS = [
    "what is debian ?",
    "how to install a package with apt on debian ?",
    "kernel",
    "who is the user of the system and what is the file ?",
]


@pytest.fixture(scope="module")
def gen(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory):
    return load_generator(str(tiny_llama), cache_dir=tmp_path_factory.mktemp("m"))


@pytest.fixture
def engine(gen):
    e = Engine(gen, max_batch=8)
    yield e
    e.close()


def _msgs(q: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}]


def test_batched_greedy_equals_generate_one_at_a_time(gen, engine: Engine) -> None:
    expected = [complete(gen, _msgs(q), 12).text for q in PROMPTS]
    jobs = [engine.submit(_msgs(q), 12) for q in PROMPTS]  # queued together: one batch
    got = [j.wait(60).text.strip() for j in jobs]
    assert got == expected
    assert all(j.finish_reason in ("length", "stop") for j in jobs)


def test_stream_deltas_add_up_to_the_text(engine: Engine) -> None:
    job = engine.submit(_msgs(PROMPTS[1]), 10)
    deltas = list(job.stream(timeout=60))
    assert len(deltas) >= 2 and "".join(deltas) == job.text and len(job.tokens) == 10


def test_stop_string_ends_early_and_is_cut(engine: Engine) -> None:
    free = engine.submit(_msgs(PROMPTS[0]), 16).wait(60).text
    words = free.split()
    assert len(words) >= 3
    stopped = engine.submit(_msgs(PROMPTS[0]), 16, stop=[words[2]]).wait(60)
    assert stopped.finish_reason == "stop" and words[2] not in stopped.text
    assert free.startswith(stopped.text)


def test_cancel_stops_a_running_job(gen) -> None:
    engine = Engine(gen, max_batch=2)
    try:
        job = engine.submit(_msgs(PROMPTS[2]), 10_000)
        first = next(job.stream(timeout=60))
        assert first
        job.cancel()
        job.wait(60)
        assert job.finish_reason == "cancelled" and len(job.tokens) < 10_000
    finally:
        engine.close()


def test_sampling_with_a_seed_is_reproducible(engine: Engine) -> None:
    a = engine.submit(_msgs(PROMPTS[0]), 12, temperature=1.5, seed=3).wait(60).text
    b = engine.submit(_msgs(PROMPTS[0]), 12, temperature=1.5, seed=3).wait(60).text
    assert a == b


def test_concurrent_submitters_all_finish(engine: Engine) -> None:
    results: list[str] = []
    lock = threading.Lock()

    def client(q: str) -> None:
        text = engine.submit(_msgs(q), 8).wait(60).text
        with lock:
            results.append(text)

    threads = [threading.Thread(target=client, args=(PROMPTS[i % 4],)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 12


def test_bad_budget_is_refused(engine: Engine) -> None:
    with pytest.raises(ValueError):
        engine.submit(_msgs("x"), 0)
    assert torch.get_num_threads() >= 1

"""eval.systems with a stand-in engine: prompts of like length submitted together, answers in
the questions' order, the progress count, retrieval time in a retrieving mode's latency, and a
stop request that cancels what is queued; and what eval.config says each mode does."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from eval.config import diagnosed_mode, needs_adapter, retrieves
from eval.index_cache import Retrieved
from eval.systems import Decoder, System
from retriever.index import Hit
from tuner.hooks import Cancelled


@dataclass
class Job:
    text: str
    done: threading.Event = field(default_factory=threading.Event)
    tokens: list[int] = field(default_factory=lambda: [1, 2])
    queued_at: float = 10.0
    started_at: float | None = 10.0
    finished_at: float | None = 10.5
    cancelled: bool = False

    def wait(self) -> None:
        self.done.wait()

    def cancel(self) -> None:
        self.cancelled = True


class Engine:
    """Answers each prompt with its last message's length; ``finish`` says whether jobs end.
    Counts one token a word, in a model of ``context`` tokens."""

    def __init__(self, finish: bool = True, context: int = 4096) -> None:
        self.finish = finish
        config = SimpleNamespace(max_position_embeddings=context)
        self.generator = SimpleNamespace(model=SimpleNamespace(config=config))
        self.adapters: Any = None
        self.submitted: list[tuple[str, int, str | None]] = []
        self.jobs: list[Job] = []

    def encode_chat(self, messages: list[dict]) -> list[int]:
        return [0 for m in messages for _ in m["content"].split()]

    def submit(
        self, messages: list[dict], max_new_tokens: int, adapter: Any = None, **_: Any
    ) -> Job:
        last = messages[-1]["content"]
        self.submitted.append((last, max_new_tokens, adapter))
        job = Job(f" {len(last)} ")
        if self.finish:
            job.done.set()
        self.jobs.append(job)
        return job


def hit(text: str) -> Hit:
    return Hit("doc", 0, 0, len(text), 1.0, text, {})


QUESTIONS = ["a much longer question than the others", "short", "a middling one"]


def test_answers_come_back_in_question_order_shortest_submitted_first() -> None:
    engine, seen = Engine(), []
    decoder = Decoder(engine, 8, total=6, progress=lambda d, t: seen.append((d, t)))
    base = System("base", None, 2, decoder)
    got = base.answer(QUESTIONS, [Retrieved([], 0.25)] * 3)
    assert [a.text for a in got] == [str(len(q)) for q in QUESTIONS]
    assert [s[0] for s in engine.submitted] == sorted(QUESTIONS, key=len)
    assert all(a.tokens == 2 and a.latency_s == 0.5 for a in got)  # no retrieval in base
    assert seen == [(1, 6), (2, 6), (3, 6)]


def test_a_retrieving_mode_prompts_with_k_passages_and_counts_retrieval_time() -> None:
    engine = Engine()
    rag = System("hybrid", "gamma-v1", 1, Decoder(engine, 8, total=1))
    found = [Retrieved([hit("first passage"), hit("second passage")], 0.25)]
    prompt = rag.prompt("q", found[0].hits)
    text = " ".join(m["content"] for m in prompt)
    assert "first passage" in text and "second passage" not in text
    (answer,) = rag.answer(["q"], found, max_new_tokens=3, count=False)
    assert answer.latency_s == 0.75 and engine.submitted[0][1:] == (3, "gamma-v1")
    assert rag.decoder.done == 0


def test_passages_over_the_context_are_dropped_and_the_answer_names_those_shown() -> None:
    engine = Engine(context=120)
    rag = System("rag", None, 3, Decoder(engine, 8, total=1))
    passages = [hit(" ".join([f"w{i}"] * 40)) for i in range(3)]  # 40 tokens each
    (answer,) = rag.answer(["q"], [Retrieved(passages, 0.0)], count=False)
    prompt = rag.prompt("q", passages)
    assert len(engine.encode_chat(prompt)) + 8 <= 120  # the prompt and the answer fit
    assert 1 <= len(answer.shown) < 3
    assert [h.text for h in answer.shown] == [h.text for h in rag.prepare("q", passages, 8).hits]
    text = " ".join(m["content"] for m in prompt)
    assert all(h.text in text for h in answer.shown) and passages[2].text not in text


def test_a_stop_request_cancels_every_queued_job() -> None:
    engine = Engine(finish=False)
    decoder = Decoder(engine, 8, total=3, should_stop=lambda: True)
    with pytest.raises(Cancelled):
        System("base", None, 1, decoder).answer(QUESTIONS, [Retrieved([], 0.0)] * 3)
    assert len(engine.jobs) == 3 and all(j.cancelled for j in engine.jobs)


def test_what_each_mode_does() -> None:
    assert [m for m in ("base", "rag", "ft", "hybrid") if retrieves(m)] == ["rag", "hybrid"]
    assert [m for m in ("base", "rag", "ft", "hybrid") if needs_adapter(m)] == ["ft", "hybrid"]
    assert diagnosed_mode(("hybrid", "rag")) == "rag"
    assert diagnosed_mode(("base", "hybrid")) == "hybrid"
    assert diagnosed_mode(("base", "ft")) is None


def test_a_question_over_the_context_is_cut_or_left_unanswered_not_fatal() -> None:
    """One over-long question raised a 422 inside the eval worker and failed the whole run
    (after the modes before it had spent their generation); the answer length the pipeline
    used (half the context) was recorded nowhere."""
    long_q = " ".join(f"w{i}" for i in range(50))  # 50 tokens; the context is 40
    engine, seen = Engine(context=40), []
    decoder = Decoder(engine, 64, total=9, progress=lambda d, t: seen.append(d))
    got = System("base", None, 1, decoder).answer(
        ["short one", long_q, "another"], [Retrieved([], 0.0)] * 3
    )
    assert [a.max_new_tokens for a in got] == [20] * 3  # 64 asked, at most half the context
    assert [a.cut_chars for a in got] == [0, len(long_q) - len(engine.submitted[2][0]), 0]
    asked = engine.submitted[2][0]  # submitted longest last
    assert long_q.startswith(asked) and 0 < len(asked.split()) <= 20 and got[1].cut_chars > 0
    assert all(a.unanswered is None for a in got) and got[1].text == str(len(asked))

    engine.adapters = SimpleNamespace(virtual_tokens=lambda name: 15)  # 5 tokens left
    prefix = System("ft", "prefix", 1, decoder).answer(
        ["short one", long_q], [Retrieved([], 0.0)] * 2
    )
    assert prefix[0].cut_chars == 0 and prefix[1].cut_chars > 0
    engine.adapters = SimpleNamespace(virtual_tokens=lambda name: 20)  # no room at all
    none = System("ft", "prefix", 1, decoder).answer(["short one"], [Retrieved([], 0.0)])
    assert (
        none[0].text == ""
        and none[0].tokens == 0
        and "max_new_tokens" in (none[0].unanswered or "")
    )
    assert seen == list(range(1, 7))  # every question counted, answered or not


@pytest.mark.slow
def test_a_run_with_an_over_long_question_finishes_and_says_so(
    squad_file: Path, eval_settings: Any, tmp_path: Path
) -> None:
    """The tiny Llama reads 256 tokens: the question of 300 words is cut in both modes (rag's
    template is longer), the run ends, and metrics.json records the answer length used (half
    the context), not only the one asked."""
    import json

    from eval.config import EvalOptions
    from eval.harness import run_eval

    long_q = " ".join(["debian"] * 300)
    row = {"id": "long", "context": "debian is an os", "question": long_q, "answers": ["os"]}
    with squad_file.open("a") as f:
        f.write(json.dumps(row) + "\n")
    options = EvalOptions(
        dataset=squad_file, modes=("base", "rag"), max_new_tokens=200, probes=False, resamples=100
    )
    metrics = run_eval(options, tmp_path / "run", eval_settings)
    run = metrics["run"]
    assert run["max_new_tokens"] == 200 and run["max_new_tokens_used"] == 128
    assert [(n["mode"], n["query_id"], n["question"]) for n in run["over_long"]] == [
        ("base", "long", 7),
        ("rag", "long", 7),
    ]
    assert all(n["cut_chars"] > 0 and "unanswered" not in n for n in run["over_long"])
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    marked = [r for r in rows if "question_cut_chars" in r]
    assert [(r["mode"], r["query_id"]) for r in marked] == [("base", "long"), ("rag", "long")]
    assert all(r["question"] == long_q for r in marked)  # the row keeps what was asked

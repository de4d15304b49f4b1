"""The batching engine: batched greedy decoding equals one-at-a-time generate; streaming, stop
strings, token budgets and cancellation."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from service.generation.engine import GenerationEngine
from service.generation.reference import complete
from tests.helpers import PROMPTS, msgs
from tuner.models import load_generator


def test_batched_greedy_equals_generate_one_at_a_time(gen, engine: GenerationEngine) -> None:
    expected = [complete(gen, msgs(q), 12).text for q in PROMPTS]
    jobs = [engine.submit(msgs(q), 12) for q in PROMPTS]  # queued together: one batch
    got = [j.wait(60).text.strip() for j in jobs]
    assert got == expected
    assert all(j.finish_reason in ("length", "stop") for j in jobs)


def test_stream_deltas_add_up_to_the_text(engine: GenerationEngine) -> None:
    job = engine.submit(msgs(PROMPTS[1]), 10)
    deltas = list(job.stream(timeout=60))
    assert len(deltas) >= 2 and "".join(deltas) == job.text and len(job.tokens) == 10


def test_stop_string_ends_early_and_is_cut(engine: GenerationEngine) -> None:
    free = engine.submit(msgs(PROMPTS[0]), 16).wait(60).text
    words = free.split()
    assert len(words) >= 3
    stopped = engine.submit(msgs(PROMPTS[0]), 16, stop=[words[2]]).wait(60)
    assert stopped.finish_reason == "stop" and words[2] not in stopped.text
    assert free.startswith(stopped.text)


def test_cancel_stops_a_running_job(gen) -> None:
    engine = GenerationEngine(gen, max_batch=2)
    try:
        job = engine.submit(msgs(PROMPTS[2]), 10_000)
        first = next(job.stream(timeout=60))
        assert first
        job.cancel()
        job.wait(60)
        assert job.finish_reason == "cancelled" and len(job.tokens) < 10_000
    finally:
        engine.close()


def test_sampling_with_a_seed_is_reproducible(engine: GenerationEngine) -> None:
    a = engine.submit(msgs(PROMPTS[0]), 12, temperature=1.5, seed=3).wait(60).text
    b = engine.submit(msgs(PROMPTS[0]), 12, temperature=1.5, seed=3).wait(60).text
    assert a == b


def test_concurrent_submitters_all_finish(engine: GenerationEngine) -> None:
    results: list[str] = []
    lock = threading.Lock()

    def client(q: str) -> None:
        text = engine.submit(msgs(q), 8).wait(60).text
        with lock:
            results.append(text)

    threads = [threading.Thread(target=client, args=(PROMPTS[i % 4],)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 12


def test_bad_budget_is_refused(engine: GenerationEngine) -> None:
    with pytest.raises(ValueError):
        engine.submit(msgs("x"), 0)
    assert torch.get_num_threads() >= 1


def test_column_major_layout_keeps_values_ties_and_outputs(tiny_llama: Path, tmp_path: Path):
    from service.generation.engine import prefer_column_major

    gen = load_generator(str(tiny_llama), cache_dir=tmp_path)
    model = gen.model
    ids = torch.tensor([gen.tokenizer(PROMPTS[0])["input_ids"]])
    with torch.inference_mode():
        before = model(input_ids=ids).logits
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    moved = prefer_column_major(model)
    assert moved > 0
    for name, p in model.named_parameters():
        assert torch.equal(p, weights[name]), name
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert all(m.weight.t().is_contiguous() for m in linears)
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    with torch.inference_mode():
        after = model(input_ids=ids).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    assert prefer_column_major(model) == 0  # already laid out: nothing moves twice


def test_requests_join_a_running_batch_and_leave_it_with_the_same_text(
    gen, engine: GenerationEngine
) -> None:
    """Continuous batching: B and C arrive while A decodes, board at the next step (their
    prompts are shorter, so the merged cache is left-padded), finish first, and every text is
    what the request alone would have given."""
    long_q, short_qs = PROMPTS[0], PROMPTS[1:3]
    expected_a = complete(gen, msgs(long_q), 120).text
    expected_short = [complete(gen, msgs(q), 6).text for q in short_qs]
    a = engine.submit(msgs(long_q), 120)
    while len(a.tokens) < 3:
        assert not a.done.wait(0.001), "A finished before anything could join it"
    late = [engine.submit(msgs(q), 6) for q in short_qs]
    got_short = [j.wait(60).text.strip() for j in late]
    assert not a.done.is_set(), "the late requests waited for A's batch instead of joining it"
    assert got_short == expected_short
    assert a.wait(60).text.strip() == expected_a and a.finish_reason == "length"


def test_rows_of_different_budgets_leave_as_they_finish(gen, engine: GenerationEngine) -> None:
    budgets = [2, 9, 4, 15, 1]
    qs = [PROMPTS[i % len(PROMPTS)] for i in range(len(budgets))]
    expected = [complete(gen, msgs(q), n).text for q, n in zip(qs, budgets, strict=True)]
    jobs = [engine.submit(msgs(q), n) for q, n in zip(qs, budgets, strict=True)]
    assert [j.wait(60).text.strip() for j in jobs] == expected
    assert [len(j.tokens) for j in jobs] == budgets


SYSTEM = "you are the assistant of the system and the user asks about the file and the package"


def test_a_shared_prompt_head_is_prefilled_once_and_texts_do_not_change(
    gen, engine: GenerationEngine
):
    def msgs(q: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]

    expected = [complete(gen, msgs(q), 10).text for q in PROMPTS]
    first = engine.submit(msgs(PROMPTS[0]), 10).wait(60)
    assert engine.prefixes.hits == 0
    rest = [engine.submit(msgs(q), 10) for q in PROMPTS[1:]]  # one batch, all on the cached head
    assert [first.text.strip()] + [j.wait(60).text.strip() for j in rest] == expected
    assert engine.prefixes.hits >= 1
    head = len(engine.encode_chat([{"role": "system", "content": SYSTEM}]))
    assert engine.prefixes.reused_tokens >= head * len(rest)


def test_prefix_entries_are_per_adapter_generation() -> None:
    from service.generation.kvcache import PrefixCache

    built = []

    class Layer:
        def __init__(self, n: int) -> None:
            self.keys = torch.arange(n, dtype=torch.float).reshape(1, 1, n, 1)
            self.values = self.keys * 2

    class Cache:
        def __init__(self, n: int) -> None:
            self.layers = [Layer(n)]
            built.append(self)

    Layer.__name__ = "DynamicLayer"
    prefixes = PrefixCache(min_tokens=3)
    prompt = list(range(10))
    prefixes.store(("a", 1), prompt, Cache(10), torch.ones(10, dtype=torch.long))
    n, cache = prefixes.lookup(("a", 1), [prompt[:6] + [99], prompt[:8]], rows=2)
    assert n == 6 and cache.layers[0].keys.shape == (2, 1, 6, 1)
    assert torch.equal(cache.layers[0].values[1, 0, :, 0], torch.arange(6.0) * 2)
    assert prefixes.lookup(("a", 2), [prompt], rows=1) == (0, None)  # reloaded: stale
    assert prefixes.lookup(("b", 1), [prompt], rows=1) == (0, None)  # another adapter
    assert prefixes.lookup(("a", 1), [[0, 1, 7, 7]], rows=1) == (0, None)  # too short a match
    n, _ = prefixes.lookup(("a", 1), [prompt], rows=1)
    assert n == 9  # the last token always runs, for its logits


def test_slack_cache_layers_hold_what_concatenation_would() -> None:
    from transformers import DynamicCache

    from service.generation.kvcache import layers as _layers
    from service.generation.kvcache import with_slack as _with_slack

    torch.manual_seed(0)
    plain, slack = DynamicCache(), DynamicCache()
    first = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    plain.update(*first, 0)
    slack.update(*first, 0)
    _with_slack(slack)
    for step in range(100):  # past the first buffer's spare room
        kv = torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 4)
        want, got = plain.update(*kv, 0), slack.update(*kv, 0)
        assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1]), step
    layer = _layers(slack)[0]
    layer.keys, layer.values = layer.keys[[1]], layer.values[[1]]  # a row left: a new buffer
    kv = torch.randn(1, 3, 1, 4), torch.randn(1, 3, 1, 4)
    keys, _ = slack.update(*kv, 0)
    assert torch.equal(keys, torch.cat([plain.layers[0].keys[[1]], kv[0]], dim=-2))
    assert slack.get_seq_length() == 106


def test_prefix_cache_keeps_a_few_heads_per_adapter_and_picks_the_longest() -> None:
    from service.generation.kvcache import PrefixCache

    class Layer:
        def __init__(self, n: int) -> None:
            self.keys = torch.arange(n, dtype=torch.float).reshape(1, 1, n, 1)
            self.values = self.keys.clone()

    class Cache:
        def __init__(self, n: int) -> None:
            self.layers = [Layer(n)]

    Layer.__name__ = "DynamicLayer"
    prefixes = PrefixCache(min_tokens=3, per_key=2)
    ones = torch.ones(12, dtype=torch.long)
    a, b, c = list(range(12)), list(range(5)) + [50] * 7, [70] * 12
    prefixes.store("k", a, Cache(12), ones)
    prefixes.store("k", b, Cache(12), ones)  # shares 5 tokens with a; both kept
    assert prefixes.lookup("k", [a[:10] + [1]], rows=1)[0] == 10  # a, the longer match
    prefixes.store("k", c, Cache(12), ones)  # b, the least recently used, goes
    assert prefixes.lookup("k", [b], rows=1)[0] == 5  # still served by a
    assert prefixes.lookup("k", [c], rows=1)[0] == 11


def test_a_request_for_another_adapter_closes_the_running_batch_to_joins(gen) -> None:
    """No starvation: once a request for another adapter waits, later requests for the running
    adapter stop boarding; the waiting one goes as soon as the batch drains, then the rest."""
    import contextlib

    class Adapters:  # the scheduling side of AdapterSet; "x" runs on the base weights here
        change_waiting = False
        generation = 0

        def loaded(self) -> list[str]:
            return ["x"]

        def active(self, name: str | None) -> contextlib.AbstractContextManager[None]:
            return contextlib.nullcontext()

    engine = GenerationEngine(gen, max_batch=8, adapters=Adapters())
    try:
        a = engine.submit(msgs(PROMPTS[0]), 150)
        while len(a.tokens) < 3:
            assert not a.done.wait(0.001)
        x = engine.submit(msgs(PROMPTS[1]), 4, adapter="x")
        while engine.queue_depth():  # the engine has seen x and holds it back
            time.sleep(0.001)
        b = engine.submit(msgs(PROMPTS[2]), 4)
        b.wait(60)
        assert a.done.is_set() and len(a.tokens) == 150  # b did not board a's batch
        assert x.done.is_set() and x.finish_reason == "length"  # x went before b
    finally:
        engine.close()


def test_a_stop_string_over_several_tokens_is_never_streamed_in_part(
    engine: GenerationEngine,
) -> None:
    """The stop spans two tokens: the first of them is held back until the second shows it
    is the stop, so neither the text nor any delta holds a piece of it."""
    free = engine.submit(msgs(PROMPTS[1]), 30, temperature=1.5, seed=4).wait(60).text
    words = free.split()
    assert len(words) >= 8
    stop = f"{words[4]} {words[5]}"
    job = engine.submit(msgs(PROMPTS[1]), 30, stop=[stop, "zzz never"], temperature=1.5, seed=4)
    deltas = list(job.stream(timeout=60))
    assert job.finish_reason == "stop"
    assert job.text == free[: free.index(stop)] == "".join(deltas)


def test_held_back_text_that_is_no_stop_is_released(engine: GenerationEngine) -> None:
    free = engine.submit(msgs(PROMPTS[1]), 20, temperature=1.5, seed=4).wait(60)
    last = free.text.split()[-1]
    job = engine.submit(msgs(PROMPTS[1]), 20, stop=[f"{last} zzz"], temperature=1.5, seed=4)
    assert "".join(job.stream(timeout=60)) == free.text == job.text
    assert job.finish_reason == "length"


def test_each_token_decodes_only_the_tail(gen, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stop check's work per token does not grow with the text: decode sees a few tokens."""
    engine = GenerationEngine(gen, max_batch=2)
    decode, seen = gen.tokenizer.decode, []

    def spy(ids: list[int], *args: object, **kwargs: object) -> str:
        seen.append(len(ids))
        return str(decode(ids, *args, **kwargs))

    monkeypatch.setattr(gen.tokenizer, "decode", spy)
    try:
        job = engine.submit(msgs(PROMPTS[0]), 150, stop=["zzz", "never this"]).wait(60)
    finally:
        engine.close()
    assert len(job.tokens) == 150 and job.text == decode(job.tokens, skip_special_tokens=True)
    assert max(seen) <= 2


def _byte_level_tokenizer():
    """A byte-level BPE (as GPT-2, Llama 3 and Qwen use): some characters take several tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    corpus = ["the debian package é and ü", "apt install ½ the kernel", "naïve café"] * 5
    core.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>")


TEXTS = [
    "the café is naïve, 東京 and ½ of the debian package",
    "日本語 emoji 🙂 then apt install é",
    "<s>special <s> in the middle",
]


@pytest.mark.parametrize("text", TEXTS)
def test_the_text_stream_gives_the_full_decode_token_by_token(text: str) -> None:
    from service.generation.sampling import TextStream

    tok = _byte_level_tokenizer()
    ids = tok(text)["input_ids"]

    def decode(part: list[int]) -> str:
        return str(tok.decode(part, skip_special_tokens=True))

    assert len(ids) > len(text.split())
    stream, shown = TextStream(decode, []), ""
    for n in range(1, len(ids) + 1):
        piece, stopped = stream.push(ids[:n])
        assert not stopped and "\ufffd" not in piece
        shown += piece
        assert decode(ids[:n]).startswith(shown)
    assert shown + stream.flush() == decode(ids)


@pytest.mark.parametrize("text", TEXTS)
def test_the_text_stream_cuts_at_the_earliest_stop_and_never_shows_part_of_one(
    text: str,
) -> None:
    from service.generation.sampling import TextStream

    tok = _byte_level_tokenizer()
    ids = tok(text)["input_ids"]
    full = str(tok.decode(ids, skip_special_tokens=True))
    for stops in (["and ½", "ï"], ["🙂 then", "e"], ["middle", "zzz"], [full[5:9], full[3:12]]):
        stream = TextStream(lambda p: str(tok.decode(p, skip_special_tokens=True)), stops)
        shown, stopped = "", False
        for n in range(1, len(ids) + 1):
            piece, stopped = stream.push(ids[:n])
            shown += piece
            if stopped:
                break
            assert not _may_become_a_stop(shown, _decode(tok, ids[:n]), stops)
        if not stopped:
            shown += stream.flush()
        assert (shown, stopped) == _first_stop_by_full_decodes(tok, ids, stops)


def _decode(tok: Any, ids: list[int]) -> str:
    return str(tok.decode(ids, skip_special_tokens=True))


def _may_become_a_stop(shown: str, text: str, stops: list[str]) -> bool:
    """Whether a stop could start inside ``shown``: some end of it, with the rest of ``text``
    after it, is the start of a stop."""
    return any(
        s.startswith(text[len(shown) - k :]) for s in stops for k in range(1, len(shown) + 1)
    )


def _first_stop_by_full_decodes(tok: Any, ids: list[int], stops: list[str]) -> tuple[str, bool]:
    """The old way: decode all tokens after each one; stop at the first text holding a stop,
    cut where the earliest stop in it starts (a text ending inside a character waits)."""
    for n in range(1, len(ids) + 1):
        text = str(tok.decode(ids[:n], skip_special_tokens=True))
        found = [text.find(s) for s in stops if s in text]
        if found and not text.endswith("\ufffd"):
            return text[: min(found)], True
    return str(tok.decode(ids, skip_special_tokens=True)), False


def test_many_stop_strings_of_a_few_lengths_still_cut_at_the_right_one() -> None:
    """90,000 stops of two lengths (looked up by length, not one by one)."""
    from service.generation.sampling import TextStream

    words = [f"w{i}" for i in range(200)]
    stops = [f"x{i:05d}" for i in range(90_000)] + ["w7 w8"]
    stream = TextStream(lambda p: " ".join(words[i] for i in p), stops)
    shown = ""
    for n in range(1, len(words) + 1):
        piece, stopped = stream.push(list(range(n)))
        shown += piece
        if stopped:
            break
    assert stopped and shown == "w0 w1 w2 w3 w4 w5 w6 "


def test_decode_steps_run_on_the_decode_threads_and_the_count_comes_back(gen) -> None:
    """With decode_threads set, every decode step runs on it and every prefill on the
    configured count, which is every thread's again afterwards."""
    from retriever import threads

    before = threads.batch_threads()
    threads.configure(2)
    seen: list[tuple[int, int]] = []  # (new tokens, torch threads)

    def record(module: Any, args: Any, kwargs: dict) -> None:
        seen.append((kwargs["input_ids"].shape[1], torch.get_num_threads()))

    hook = gen.model.register_forward_pre_hook(record, with_kwargs=True)
    engine = GenerationEngine(gen, max_batch=4, decode_threads=1)
    try:
        for wave in range(2):  # the second wave's prefill comes after the first's steps
            jobs = [engine.submit(msgs(PROMPTS[i + wave]), 6) for i in range(3)]
            assert all(job.wait(60).tokens for job in jobs)
    finally:
        engine.close()
        hook.remove()
        threads.configure(before)
    prefills = [t for width, t in seen if width > 1]
    steps = {t for width, t in seen if width == 1}
    first_step = next(i for i, (width, _) in enumerate(seen) if width == 1)
    assert any(width > 1 for width, _ in seen[first_step:])  # a prefill after decode steps
    assert set(prefills) == {2} and steps == {1}, seen


def test_decode_threads_below_one_are_refused(gen) -> None:
    with pytest.raises(ValueError, match="decode_threads must be >= 1"):
        GenerationEngine(gen, decode_threads=0)


def test_step_threads_time_both_counts_then_run_the_faster_per_batch_size() -> None:
    from retriever import threads
    from service.generation.stepthreads import RETRY, TRIALS, StepThreads

    before = threads.batch_threads()
    threads.configure(2)
    try:
        chooser = StepThreads()
        cost = {(1, 1): 0.02, (1, 2): 0.04, (16, 1): 0.09, (16, 2): 0.05}  # seconds per step
        picks: dict[int, list[int]] = {1: [], 16: []}
        for _ in range(TRIALS * 2 + 10):
            for rows in (1, 16):
                count = chooser.pick(rows)
                assert count is not None
                picks[rows].append(count)
                chooser.record(rows, count, cost[(rows, count)])
        for rows in (1, 16):  # each count timed TRIALS times, then the faster one only
            assert sorted(picks[rows][: 2 * TRIALS]) == [1] * TRIALS + [2] * TRIALS
        assert set(picks[1][2 * TRIALS :]) == {1} and set(picks[16][2 * TRIALS :]) == {2}
        assert chooser.chosen() == {1: 1, 16: 2}
        later = [chooser.pick(1) for _ in range(RETRY)]  # the slower is timed again, once
        assert later.count(2) == 1
        for _ in range(TRIALS * 3):  # the machine changed: 2 threads became faster at 1 row
            chooser.record(1, 2, 0.01)
        assert chooser.pick(1) == 2
        assert StepThreads(fixed=1).pick(16) == 1
        threads.configure(1)
        assert StepThreads().pick(1) is None  # one core: nothing to choose
    finally:
        threads.configure(before)

"""The generation engine: one model shared by all requests, decoded together step by step.

Requests queue up; a worker thread takes up to ``max_batch`` of them, left-pads their prompts and
decodes the batch one token per step with a KV cache. Each step hands every request its new text
(for streaming); a request leaves the batch on end-of-sequence, a stop string, its token budget,
or cancellation (a client that disconnected). Requests that arrive during a batch wait for the
next one (step-level batching; no mid-batch joins). Greedy unless a temperature is given.
The engine knows nothing of retrieval or HTTP.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tuner.models import Generator

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One request: its prompt, limits, and the stream of text it produces."""

    prompt_ids: list[int]
    max_new_tokens: int
    stop: list[str] = field(default_factory=list)
    temperature: float = 0.0
    seed: int | None = None
    adapter: str | None = None
    deltas: queue.Queue[str | None] = field(default_factory=queue.Queue)
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    queued_at: float = field(default_factory=time.perf_counter)

    def cancel(self) -> None:
        self.cancelled.set()

    def stream(self, timeout: float | None = None) -> Iterator[str]:
        """Text deltas as they are generated; ends when the job finishes."""
        while True:
            delta = self.deltas.get(timeout=timeout)
            if delta is None:
                if self.error is not None:
                    raise self.error
                return
            yield delta

    def wait(self, timeout: float | None = None) -> Job:
        if not self.done.wait(timeout):
            raise TimeoutError("generation did not finish in time")
        if self.error is not None:
            raise self.error
        return self


class Engine:
    """A worker thread batching the jobs submitted to it."""

    def __init__(
        self,
        generator: Generator,
        max_batch: int = 16,
        metrics: Any = None,
        adapters: Any = None,
        gather_s: float = 0.02,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.generator = generator
        self.max_batch = max_batch
        self.metrics = metrics
        self.adapters = adapters  # service.adapters.AdapterSet, or None: base model only
        self.gather_s = gather_s  # how long a new batch waits for more requests to join
        self._held: list[Job] = []  # taken from the queue, waiting for their adapter's batch
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="ragtune-engine", daemon=True)
        self._stopping = False
        self._thread.start()

    # ---- submitting -------------------------------------------------------------------------
    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        tok = self.generator.tokenizer
        ids: Any = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return [int(i) for i in ids]

    def submit(
        self,
        messages: list[dict[str, str]],
        max_new_tokens: int,
        stop: list[str] | None = None,
        temperature: float = 0.0,
        seed: int | None = None,
        adapter: str | None = None,
    ) -> Job:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if adapter is not None and (self.adapters is None or adapter not in self.adapters.loaded()):
            raise LookupError(f"adapter {adapter!r} is not loaded")
        prompt = self.encode_chat(messages)
        job = Job(prompt, max_new_tokens, list(stop or []), temperature, seed, adapter)
        self._queue.put(job)
        self._gauge()
        return job

    def queue_depth(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        self._stopping = True
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue.set(self._queue.qsize())

    # ---- the worker -------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping:
            if self._held:
                first = self._held.pop(0)
            else:
                got = self._queue.get()
                if got is None:
                    return
                first = got
            batch: list[Job] = [first]
            later: list[Job] = []
            for job in self._held:  # same adapter joins; others wait for their own batch
                fits = job.adapter == first.adapter and len(batch) < self.max_batch
                (batch if fits else later).append(job)
            self._held = later
            deadline = time.monotonic() + self.gather_s  # let a burst of requests board
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._stopping = True
                    break
                if nxt.adapter == first.adapter:
                    batch.append(nxt)
                else:
                    self._held.append(nxt)
            self._gauge()
            live = [j for j in batch if not j.cancelled.is_set()]
            for j in batch:
                if j.cancelled.is_set():
                    self._finish(j, "cancelled")
            if not live:
                continue
            try:
                if self.adapters is None:
                    self._decode(live)
                else:
                    with self.adapters.active(first.adapter):
                        self._decode(live)
            except BaseException as exc:  # noqa: BLE001 - reported to every waiting request
                log.exception("generation failed for a batch of %d", len(live))
                for j in live:
                    if not j.done.is_set():
                        j.error = exc
                        self._finish(j, "error")

    def _finish(self, job: Job, reason: str) -> None:
        job.finish_reason = reason
        job.deltas.put(None)
        job.done.set()

    def _decode(self, jobs: list[Job]) -> None:
        import torch

        model, tok = self.generator.model, self.generator.tokenizer
        device = model.device
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        eos = _eos_ids(model, tok)
        width = max(len(j.prompt_ids) for j in jobs)
        ids = torch.full((len(jobs), width), pad, dtype=torch.long)  # (batch, width), left-padded
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for row, j in enumerate(jobs):
            ids[row, width - len(j.prompt_ids) :] = torch.tensor(j.prompt_ids)
            mask[row, width - len(j.prompt_ids) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (batch, width)
        generators = [_rng(j.seed) for j in jobs]
        active = [True] * len(jobs)
        past = None
        base: Any = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]
        cache_arg = _cache_arg(base)
        step_ids = ids
        padded = bool((mask == 0).any())
        with torch.inference_mode():
            for _ in range(max(j.max_new_tokens for j in jobs)):
                out = model(
                    input_ids=step_ids,
                    attention_mask=mask if padded else None,  # no mask: SDPA's causal fast path
                    position_ids=positions,
                    use_cache=True,
                    logits_to_keep=1,
                    **{cache_arg: past},
                )
                past = getattr(out, cache_arg)
                logits = out.logits[:, -1, :].float()  # (batch, vocab)
                nxt = torch.stack(
                    [_pick(logits[r], j.temperature, generators[r]) for r, j in enumerate(jobs)]
                )  # (batch,)
                for r, j in enumerate(jobs):
                    if active[r]:
                        active[r] = self._advance(j, int(nxt[r]), eos)
                if not any(active):
                    break
                step_ids = nxt.unsqueeze(1)  # (batch, 1)
                mask = torch.cat([mask, torch.ones_like(step_ids)], dim=1)
                positions = positions[:, -1:] + 1
        for r, j in enumerate(jobs):
            if active[r]:
                self._finish(j, "length")

    def _advance(self, job: Job, token: int, eos: set[int]) -> bool:
        """Give ``job`` its next token; False when the job has finished."""
        if job.cancelled.is_set():
            self._finish(job, "cancelled")
            return False
        if token in eos:
            self._finish(job, "stop")
            return False
        job.tokens.append(token)
        if self.metrics is not None:
            self.metrics.tokens.inc()
        text = str(self.generator.tokenizer.decode(job.tokens, skip_special_tokens=True))
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the rest
            return len(job.tokens) < job.max_new_tokens or self._end(job, "length")
        hit = _first_stop(text, job.stop, len(job.text))
        if hit is not None:
            text = text[:hit]
        if len(text) > len(job.text):
            job.deltas.put(text[len(job.text) :])
            job.text = text
        if hit is not None:
            return self._end(job, "stop")
        if len(job.tokens) >= job.max_new_tokens:
            return self._end(job, "length")
        return True

    def _end(self, job: Job, reason: str) -> bool:
        self._finish(job, reason)
        return False


def _cache_arg(model: Any) -> str:
    """transformers renamed ``past_key_values`` to ``cache`` (5.2x); accept both."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _eos_ids(model: Any, tok: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    return ids


def _rng(seed: int | None) -> Any:
    import torch

    g = torch.Generator()
    g.manual_seed(seed if seed is not None else int(time.time_ns() % (2**31)))
    return g


def _pick(logits: Any, temperature: float, generator: Any) -> Any:
    import torch

    if temperature <= 0:
        return logits.argmax()
    probs = torch.softmax(logits / temperature, dim=-1).cpu()
    return torch.multinomial(probs, 1, generator=generator)[0].to(logits.device)


def _first_stop(text: str, stops: list[str], already: int) -> int | None:
    """Index where the earliest stop string starts, searching only where new text could match."""
    best = None
    for s in stops:
        if not s:
            continue
        at = text.find(s, max(0, already - len(s) + 1))
        if at >= 0 and (best is None or at < best):
            best = at
    return best

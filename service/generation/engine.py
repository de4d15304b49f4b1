"""The generation engine: one model shared by all requests, decoded together step by step.

Requests queue up; a worker thread takes up to ``max_batch`` of them, left-pads their prompts and
decodes the batch one token per step with a KV cache. Each step hands every request its new text
(for streaming); a request leaves the batch on end-of-sequence, a stop string, its token budget,
or cancellation (a client that disconnected), and its row leaves the cache. Requests that arrive
while a batch runs join it at the next step (continuous batching): their prompts are prefilled
together and their caches merged into the running one. A batch runs one adapter; requests for
another wait until it drains. Greedy unless a temperature is given.

A fault fails only the request it belongs to: what is one request's own (its sampling, its
text and stop check) is guarded row by row, and when a batched forward (a prefill, a decode
step, a merge) fails, each request in it is prefilled again alone from its prompt and the tokens
it has so far; the ones that fail alone end with ``GenerationFailed``, the rest decode on. The
traceback goes to the log, never to the request. What submit can check (seed, temperature, stop
strings) it refuses with ``ValueError`` before the request reaches a batch.
The engine knows nothing of retrieval or HTTP.

On CPU the engine stores each linear layer's weight column-major (same values, transposed
memory layout; see ``prefer_column_major``): MKL multiplies a small batch by a weight laid out
that way about 4x faster, which is what makes batching pay on a CPU. With ``precision="int4"``
the base model's linear layers decode from 4-bit copies of their weights instead
(``service.generation.quant``); adapters keep their own precision.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from contextlib import ExitStack
from typing import Any

from service.generation.kvcache import (
    PrefixCache,
    Rows,
    cache_arg,
    merge,
    mergeable,
    with_slack,
)
from service.generation.request import GenerationFailed, GenerationRequest
from service.generation.sampling import TextStream, eos_ids, pick, rng
from service.generation.stepthreads import StepThreads, torch_threads
from tuner.models import Generator

log = logging.getLogger(__name__)


class GenerationEngine:
    """A worker thread batching the jobs submitted to it."""

    def __init__(
        self,
        generator: Generator,
        max_batch: int = 16,
        metrics: Any = None,
        adapters: Any = None,
        gather_s: float = 0.02,
        max_gather_s: float = 0.25,
        prefix_min_tokens: int = 8,
        prefix_max_tokens: int = 2048,
        precision: str = "fp32",
        decode_threads: int | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.generator = generator
        self.max_batch = max_batch
        self.metrics = metrics
        self.adapters = adapters  # service.adapters.AdapterSet, or None: base model only
        self.precision = precision
        on_cpu = generator.model.device.type == "cpu"
        # a decode step's torch threads: fixed, or timed per batch size (service.generation
        # .stepthreads); off the CPU torch's threads do not decode
        self.step_threads = StepThreads(decode_threads) if on_cpu else None
        from service.generation.quant import quantise_for_serving  # imports torch

        quantise_for_serving(generator.model, precision)  # ValueError off the CPU for int4
        if on_cpu:
            prefer_column_major(generator.model)
        # A new batch waits for a burst of requests to board: until none has arrived for
        # gather_s, and never longer than max_gather_s. One request alone waits gather_s.
        self.gather_s = gather_s
        self.max_gather_s = max_gather_s
        self._held: list[
            GenerationRequest
        ] = []  # taken from the queue, waiting for their adapter's batch
        self._inflight: list[
            GenerationRequest
        ] = []  # the running batch's requests, failed together on error
        self._arg_for: tuple[Any, str] | None = None
        self._lean_for: tuple[int, int] | None = None  # (model, adapter generation) made lean
        self._eos = eos_ids(generator.model, generator.tokenizer)  # fixed for the model's life
        self.prefixes = PrefixCache(min_tokens=prefix_min_tokens, max_tokens=prefix_max_tokens)
        self._queue: queue.Queue[GenerationRequest | None] = queue.Queue()
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
        prompt_ids: list[int] | None = None,
        on_finish: Any = None,
    ) -> GenerationRequest:
        """Queue ``messages`` for generation; ``prompt_ids``, when given, are ``encode_chat`` of
        them already made (the answering pipeline counted the prompt with it). ``on_finish`` is
        called with the request, in the engine's thread, once it has ended (it must be quick)."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if isinstance(temperature, bool) or not (
            isinstance(temperature, int | float) and math.isfinite(temperature) and temperature >= 0
        ):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
        stops = list(stop or [])
        if not all(isinstance(s, str) for s in stops):
            raise ValueError("stop must be a list of strings")
        sampler = rng(seed)  # ValueError for a seed torch cannot take
        if adapter is not None and (self.adapters is None or adapter not in self.adapters.loaded()):
            raise LookupError(f"adapter {adapter!r} is not loaded")
        prompt = list(prompt_ids) if prompt_ids is not None else self.encode_chat(messages)
        job = GenerationRequest(prompt, max_new_tokens, stops, temperature, seed, adapter)
        job.sampler, job.text_stream = sampler, TextStream(self._decode, stops)
        job.on_finish = on_finish
        self._queue.put(job)
        self._gauge()
        return job

    def _decode(self, ids: list[int]) -> str:
        return str(self.generator.tokenizer.decode(ids, skip_special_tokens=True))

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
            first = self._held.pop(0) if self._held else self._queue.get()
            if first is None:
                return
            self._inflight = [first]
            try:
                jobs = [first, *self._take(first.adapter, self.max_batch - 1, self.gather_s)]
                self._inflight = list(jobs)
                self._batch(first.adapter, jobs)
            except BaseException:  # noqa: BLE001 - the engine thread outlives any fault
                log.exception("generation failed for %d requests", len(self._inflight))
                for j in self._inflight:
                    self._fail(j)
            self._inflight = []

    def _batch(self, adapter: str | None, jobs: list[GenerationRequest]) -> None:
        """Serve ``jobs`` with ``adapter`` active. If it was unloaded since they were submitted,
        they (all for that adapter) fail with a one-line error."""
        if self.adapters is None:
            self._serve(adapter, jobs)
            return
        with ExitStack() as stack:
            try:
                stack.enter_context(self.adapters.active(adapter))
            except LookupError as exc:
                log.warning("%d requests failed: %s", len(jobs), exc)
                for j in jobs:
                    self._fail(j, f"adapter {adapter!r} is no longer loaded; retry")
                return
            self._serve(adapter, jobs)

    def _take(self, adapter: str | None, room: int, gap: float | None) -> list[GenerationRequest]:
        """Up to ``room`` waiting jobs for ``adapter``, held-back ones first, then from the queue.
        With a ``gap``, waits for more until none has come for ``gap`` seconds (at most
        ``max_gather_s`` in all); without, takes only what is already queued. Other adapters'
        jobs are held back for their own batch."""
        now = time.monotonic()
        cap = now + self.max_gather_s
        deadline = now + gap if gap is not None else None
        taken: list[GenerationRequest] = []
        later: list[GenerationRequest] = []
        for job in self._held:
            (taken if job.adapter == adapter and len(taken) < room else later).append(job)
        self._held = later
        while len(taken) < room:
            try:
                if deadline is None:
                    nxt = self._queue.get_nowait()
                else:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if nxt is None:
                self._stopping = True
                break
            (taken if nxt.adapter == adapter else self._held).append(nxt)
            if deadline is not None and gap is not None:
                deadline = min(cap, time.monotonic() + gap)  # a burst is still arriving
        self._gauge()
        return taken

    def _joins_open(self, rows: Rows | None) -> bool:
        """Whether requests may still board this adapter's running batch. Not when a request for
        another adapter or an adapter load/unload is waiting (they go once the batch drains),
        nor while stopping, nor when this transformers' cache cannot be merged."""
        if self._stopping or self._held:
            return False
        if self.adapters is not None and getattr(self.adapters, "change_waiting", False):
            return False
        return rows is None or mergeable(rows.cache)

    def _serve(self, adapter: str | None, jobs: list[GenerationRequest]) -> None:
        """Decode ``jobs`` and every request that joins them (continuous batching): each step,
        waiting requests for the same adapter are prefilled and merged into the running batch,
        and finished ones leave it, until nothing is left."""
        import torch

        rows: Rows | None = None
        with torch.inference_mode():
            while True:
                boarding = []
                for j in jobs:
                    if j.cancelled.is_set():
                        self._finish(j, "cancelled")
                    else:
                        boarding.append(j)
                if boarding:
                    rows = self._board(rows, boarding, adapter)
                if rows is not None:
                    if self.metrics is not None:
                        self.metrics.batch_size.observe(len(rows.jobs))
                    rows = self._decode_step(rows, adapter)
                jobs = []
                if self._joins_open(rows):
                    room = self.max_batch - (len(rows.jobs) if rows is not None else 0)
                    jobs = self._take(adapter, room, None) if room > 0 else []
                    self._inflight = [j for j in self._inflight if not j.done.is_set()] + jobs
                if rows is None and not jobs:
                    return

    def _finish(self, job: GenerationRequest, reason: str) -> None:
        job.finished_at = time.perf_counter()
        job.finish_reason = reason
        if job.on_finish is not None:  # before done: whoever waits on it sees its effect
            try:
                job.on_finish(job)
            except Exception:  # noqa: BLE001 - a record lost, never the engine
                log.exception("a finished request's callback failed")
        job.deltas.put(None)
        job.done.set()

    def _fail(self, job: GenerationRequest, why: str = "") -> None:
        if not job.done.is_set():
            job.error = GenerationFailed(why or "generation failed; the server log has the details")
            self._finish(job, "error")

    def _fault(self, job: GenerationRequest, where: str) -> None:
        """Fail ``job`` for an error raised in its own ``where``; call inside ``except``."""
        log.exception("a request failed in %s; the rest of its batch goes on", where)
        self._fail(job)

    # ---- isolating faults -------------------------------------------------------------------
    def _board(
        self, rows: Rows | None, jobs: list[GenerationRequest], adapter: str | None
    ) -> Rows | None:
        """Prefill ``jobs`` and merge them into the running ``rows``; if that fails, each of
        them is retried alone, and the running rows stay as they were."""
        try:
            new = self._prefill(jobs, adapter)
        except Exception:
            if len(jobs) == 1:
                self._fault(jobs[0], "its prefill")
                return rows
            log.exception("a prefill of %d requests failed; each goes alone", len(jobs))
            return self._rebuild(jobs, adapter, rows)
        if new is None or rows is None:
            return new if rows is None else rows
        try:
            return merge(rows, new)  # leaves rows as they were if it raises
        except Exception:
            log.exception("merging %d requests into the batch failed; each goes alone", len(jobs))
            return self._rebuild(new.jobs, adapter, rows)

    def _decode_step(self, rows: Rows, adapter: str | None) -> Rows | None:
        try:
            return self._step(rows)
        except Exception:
            log.exception("a decode step of %d rows failed; each goes alone", len(rows.jobs))
            return self._rebuild(rows.jobs, adapter)

    def _rebuild(
        self, jobs: list[GenerationRequest], adapter: str | None, into: Rows | None = None
    ) -> Rows | None:
        """Prefill each unfinished job of ``jobs`` alone again, from its prompt and the tokens
        it has so far (so the prefill gives its next token, as a decode step would), and merge
        it into ``into``. A job that fails alone fails; the others decode on."""
        rows = into
        for job in jobs:
            if job.done.is_set():
                continue
            try:
                alone = self._prefill([job], adapter)
                if alone is not None:
                    rows = alone if rows is None else merge(rows, alone)
            except Exception:
                self._fault(job, "a prefill of its own")
        return rows

    def _model(self) -> tuple[Any, str]:
        """The model (a PeftModel once an adapter was loaded) and its cache argument's name."""
        model: Any = self.generator.model
        if self._arg_for is None or self._arg_for[0] is not model:
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            self._arg_for = (model, cache_arg(base))
        generation = getattr(self.adapters, "generation", 0)
        if self._lean_for != (id(model), generation):  # an adapter came: its layers go lean
            from service.generation.leanlora import make_lean  # imports torch

            make_lean(model)
            self._lean_for = (id(model), generation)
        return model, self._arg_for[1]

    def _prefill(self, jobs: list[GenerationRequest], adapter: str | None) -> Rows | None:
        """Run the prompts of ``jobs`` and give each its first token. The part every prompt
        shares with the last prompt prefilled for ``adapter`` (the chat template's system turn,
        the grounding instructions) comes from the prefix cache; the rest is left-padded to one
        width, so a row reads [shared prefix][padding][its own tokens]. A job that has tokens
        already (one rebuilt after a failed batch) is prefilled with them after its prompt."""
        import torch

        model, cache_arg = self._model()
        now = time.perf_counter()
        for j in jobs:
            j.started_at = now if j.started_at is None else j.started_at
        prompts = [j.prompt_ids + j.tokens for j in jobs]
        shared, cache = self.prefixes.lookup(self._prefix_key(adapter), prompts, len(jobs))
        log.debug("prefilling %d requests, %d shared tokens cached", len(jobs), shared)
        pad = self.generator.tokenizer.pad_token_id
        width = max(len(p) - shared for p in prompts)
        ids = torch.full((len(jobs), width), pad if pad is not None else 0, dtype=torch.long)
        mask = torch.zeros((len(jobs), shared + width), dtype=torch.long)
        mask[:, :shared] = 1
        for row, p in enumerate(prompts):
            own = p[shared:]
            ids[row, width - len(own) :] = torch.tensor(own)
            mask[row, shared + width - len(own) :] = 1
        ids, mask = ids.to(model.device), mask.to(model.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]  # (rows, width)
        out = model(
            input_ids=ids,
            attention_mask=None if bool(mask.all()) else mask,  # no mask: SDPA's causal path
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{cache_arg: cache},
        )
        rows = Rows(
            jobs=list(jobs),
            cache=with_slack(getattr(out, cache_arg)),
            mask=mask,
            positions=positions[:, -1:] + 1,
            next_ids=ids[:, -1:],
        )
        self.prefixes.store(self._prefix_key(adapter), prompts[0], rows.cache, mask[0])
        return self._pick(rows, out.logits[:, -1, :].float())

    def _prefix_key(self, adapter: str | None) -> tuple[str | None, int]:
        """Cached keys and values depend on the adapter's weights: a load or unload (which may
        replace an adapter under the same name) starts a new generation of keys."""
        return adapter, getattr(self.adapters, "generation", 0)

    def _step(self, rows: Rows) -> Rows | None:
        """One decode step: every row's next token."""
        import torch

        model, cache_arg = self._model()
        mask = torch.cat([rows.mask, torch.ones_like(rows.next_ids)], dim=1)  # (rows, width + 1)
        count = self.step_threads.pick(len(rows.jobs)) if self.step_threads else None
        started = time.perf_counter()
        with torch_threads(count):
            out = model(
                input_ids=rows.next_ids,
                attention_mask=None if bool(mask.all()) else mask,
                position_ids=rows.positions,
                use_cache=True,
                logits_to_keep=1,
                **{cache_arg: rows.cache},
            )
        if self.step_threads is not None:
            self.step_threads.record(len(rows.jobs), count, time.perf_counter() - started)
        rows.cache, rows.mask, rows.positions = getattr(out, cache_arg), mask, rows.positions + 1
        return self._pick(rows, out.logits[:, -1, :].float())

    def _pick(self, rows: Rows, logits: Any) -> Rows | None:
        """Choose each row's token from ``logits`` (rows, vocab), hand it to its job, and drop
        the rows that finished or failed; None when none is left. A row whose sampling or text
        raises fails its own job only."""
        import torch

        chosen, placeholder = [], torch.zeros((), dtype=torch.long, device=logits.device)
        for r, job in enumerate(rows.jobs):
            try:
                chosen.append(pick(logits[r], job.temperature, job.sampler))
            except Exception:
                self._fault(job, "its sampling")
                chosen.append(placeholder)
        nxt = torch.stack(chosen)  # (rows,)
        keep = []
        for r, token in enumerate(nxt.tolist()):
            job = rows.jobs[r]
            try:
                if not job.done.is_set() and self._advance(job, token):
                    keep.append(r)
            except Exception:
                self._fault(job, "its text")
        rows.next_ids = nxt.unsqueeze(1)
        if not keep:
            return None
        if len(keep) < len(rows.jobs):
            rows.select(keep)
        return rows

    def _advance(self, job: GenerationRequest, token: int) -> bool:
        """Give ``job`` its next token; False when the job has finished."""
        if job.cancelled.is_set():
            return self._end(job, "cancelled")
        if token in self._eos:
            self._emit(job, job.text_stream.flush())
            return self._end(job, "stop")
        job.tokens.append(token)
        if self.metrics is not None:
            self.metrics.tokens.inc()
        delta, stopped = job.text_stream.push(job.tokens)
        self._emit(job, delta)
        if stopped:
            return self._end(job, "stop")
        if len(job.tokens) >= job.max_new_tokens:
            self._emit(job, job.text_stream.flush())
            return self._end(job, "length")
        return True

    def _emit(self, job: GenerationRequest, delta: str) -> None:
        if delta:
            job.text += delta
            job.deltas.put(delta)

    def _end(self, job: GenerationRequest, reason: str) -> bool:
        self._finish(job, reason)
        return False


def prefer_column_major(model: Any) -> int:
    """Lay every linear weight of ``model`` out column-major, in place; returns how many moved.

    ``F.linear(x, W)`` computes ``x @ W.T``. With ``W`` stored (out, in) row-major, MKL's sgemm
    for a few rows of ``x`` (a decode step of a batch: 4 to 16 rows) runs a slow transposed
    kernel: on this project's 2-core machine a (16, 576) x (576, 1536) product took 1.0 ms, and
    0.25 ms with ``W.T`` contiguous. One row and long prompts are no slower. Values, shapes and
    parameter objects stay the same (tied embeddings stay tied; PEFT adapters wrap the layers
    as before); only ``stride()`` changes. For serving only: a model that is saved needs
    ``contiguous()`` weights again.
    """
    import torch
    from torch import nn

    from service.generation.quant import Int4Linear

    moved = 0
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if isinstance(module, Int4Linear):
                continue  # decodes from its int4 copy; the head gathers rows of this weight
            if isinstance(module, nn.Linear) and weight is not None and weight.is_contiguous():
                weight.data = weight.data.t().contiguous().t()
                moved += 1
    return moved

"""How many torch threads a decode step runs on, chosen by timing the steps themselves.

A decode step is a few hundred small operations, and what a second thread is worth for them
depends on things the engine cannot see: GNU OpenMP's worker of the engine's thread waits
passively under ragtune's default ``OMP_WAIT_POLICY=PASSIVE`` (kept for search latency, see
``retriever.threads``), and once a second thread of the process has run torch's parallel work
(a query encode, an ingest) libgomp throttles every worker's spinning, so each parallel region
costs a wake-up. Measured on 2 cores, SmolLM2-135M int4, decode tokens/s at 1 and 16 rows
(``benchmarks/llama_cpp_compare.py`` notes):

| the engine's thread | 1 thread | 2 threads |
| --- | --- | --- |
| the only one with an OpenMP pool, workers spinning | 54, 213 | 67, 338 |
| passive waiting, or another thread's pool alive | 54, 213 | 26, 222 |

So neither count is right everywhere. ``StepThreads`` times each candidate (1 and the
configured count) on a few steps of each batch size (rows bucketed by powers of two), then
runs the faster, and times the other again every ``RETRY`` steps, since the machine changes (an
ingest starts, a query thread exits). A prefill always runs on the configured count: a long
prompt is a few large products, where a second thread pays (a 550-token prefill: 0.65 s on 2
threads, 0.97 s on 1).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

TRIALS = 3  # steps each count is timed for, per batch size, before the faster is chosen
RETRY = 64  # steps of a batch size after which the count not chosen is timed again
SMOOTHING = 0.3  # weight of the newest step in a count's moving average


class StepThreads:
    """Per batch size, the torch thread count whose decode steps have been fastest."""

    def __init__(self, fixed: int | None = None) -> None:
        if fixed is not None and fixed < 1:
            raise ValueError(f"decode_threads must be >= 1, got {fixed}")
        self.fixed = fixed
        self._seconds: dict[tuple[int, int], tuple[int, float]] = {}  # (bucket, count) -> n, avg
        self._since: dict[int, int] = {}  # bucket -> steps since the other count was timed

    def pick(self, rows: int) -> int | None:
        """The thread count for a step of ``rows`` rows; None: leave torch's as it is."""
        if self.fixed is not None:
            return self.fixed
        counts = candidates()
        if len(counts) == 1:
            return None
        bucket = rows.bit_length()
        for count in counts:
            n, _ = self._seconds.get((bucket, count), (0, 0.0))
            if n < TRIALS:
                return count
        best = min(counts, key=lambda c: self._seconds[(bucket, c)][1])
        self._since[bucket] = self._since.get(bucket, 0) + 1
        if self._since[bucket] >= RETRY:
            self._since[bucket] = 0
            return next(c for c in counts if c != best)
        return best

    def record(self, rows: int, count: int | None, seconds: float) -> None:
        """A step of ``rows`` rows on ``count`` threads took ``seconds``."""
        if count is None or self.fixed is not None:
            return
        key = (rows.bit_length(), count)
        n, avg = self._seconds.get(key, (0, seconds))
        self._seconds[key] = (n + 1, seconds if n == 0 else avg + SMOOTHING * (seconds - avg))

    def chosen(self) -> dict[int, int]:
        """Batch-size bucket (its smallest row count) -> the count now preferred, where both
        counts were timed."""
        out = {}
        for bucket in {b for b, _ in self._seconds}:
            timed = {c: s for (b, c), (n, s) in self._seconds.items() if b == bucket and n}
            if len(timed) > 1:
                out[1 << (bucket - 1)] = min(timed, key=timed.__getitem__)
        return out


def candidates() -> tuple[int, ...]:
    from retriever import threads

    return tuple(sorted({1, threads.batch_threads()}))


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block on ``count`` torch threads (None: as they are), then give the calling
    thread, and the default that threads new to torch take, the configured count again."""
    if count is None:
        yield
        return
    import torch

    from retriever import threads

    configured = threads.batch_threads()
    if count == configured:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(configured)

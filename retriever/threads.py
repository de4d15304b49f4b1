"""Thread settings that keep a search fast when the CPU is shared (an ingest, a generation, a
training job or another program on the same cores).

Two settings, both on by default, both measured on 2 cores already busy with other work
(Debian FAQ en, 2091 chunks, all-MiniLM-L6-v2; ``benchmarks/retriever_bench.py --only latency``):

- **Passive OpenMP waiting** (``OMP_WAIT_POLICY=PASSIVE``). torch and faiss each carry their own
  GNU OpenMP runtime; by default an idle worker of either spins for a while after every parallel
  region, taking the core that the other thread of the team, or a neighbour, needs. One query's
  encode is a few hundred short parallel regions, so it is the spinning that made a dense search
  wait: p50 95 ms, and 770 ms beside a numpy matmul loop, against 21 ms and 72 ms with passive
  waiting. A runtime reads the variable once, when it loads, so ``prefer_passive_wait`` has to run
  before torch or faiss is imported; ``retriever.vectors`` calls it before importing faiss, which
  is before anything of ragtune loads torch. An ``OMP_WAIT_POLICY`` the user set is kept.
- **One thread for one query** (``query_threads``). Encoding one short text has too little work to
  share between threads: on one thread it took 20 ms instead of 95 ms with spinning workers and
  110 ms instead of 770 ms beside the matmul loop, and no worse with passive waiting. A batch (an
  ingest, a re-embedding) keeps the configured count. faiss needs no limit: a flat or HNSW search
  of one query already runs on one thread (limiting it measured the same).

``torch.set_num_threads`` is per thread for a thread that has used torch, but a thread using torch
for the first time takes the last value set by any thread. So ``for_texts`` restores the
configured count (not the calling thread's previous one) and a batch re-asserts it, so a worker
thread first used during another thread's query never stays at one thread.

``RAGTUNE_THREAD_LIMITS=0`` turns both settings off (torch's and OpenMP's defaults stand);
``RAGTUNE_QUERY_THREADS`` sets the count for one query (default 1). Knows nothing of indexes or
models.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

LIMITS_ENV = "RAGTUNE_THREAD_LIMITS"  # "0": leave every thread setting at the libraries' default
QUERY_THREADS_ENV = "RAGTUNE_QUERY_THREADS"  # torch threads for a one-text encode (default 1)
WAIT_POLICY_ENV = "OMP_WAIT_POLICY"  # read by each OpenMP runtime when it loads
QUERY_TEXTS = 1  # encodes of at most this many texts are queries; larger ones are batches

_batch_threads: int | None = None  # the count a batch runs with; None: torch's, read once


def enabled() -> bool:
    """Whether ragtune applies its thread settings (``RAGTUNE_THREAD_LIMITS`` is not ``0``)."""
    return os.environ.get(LIMITS_ENV, "1").strip() != "0"


def prefer_passive_wait() -> None:
    """Make idle OpenMP workers sleep instead of spinning, unless the user chose a policy or
    turned the settings off. Only runtimes loaded after this call see it."""
    if enabled():
        os.environ.setdefault(WAIT_POLICY_ENV, "PASSIVE")


def query_threads() -> int:
    """torch threads for one query's encode; 0 when the limit is off."""
    if not enabled():
        return 0
    raw = os.environ.get(QUERY_THREADS_ENV, "1").strip()
    try:
        count = int(raw)
    except ValueError:
        raise ValueError(f"{QUERY_THREADS_ENV}: a whole number >= 0, got {raw!r}") from None
    if count < 0:
        raise ValueError(f"{QUERY_THREADS_ENV}: a whole number >= 0, got {raw!r}")
    return count


def configure(batch_threads: int | None) -> None:
    """Set the torch thread count of batches (the ``threads`` setting; None: torch's default as
    it stands now) in this thread and as the count every query returns to."""
    import torch

    global _batch_threads
    if batch_threads is not None:
        torch.set_num_threads(batch_threads)
    _batch_threads = torch.get_num_threads()


def batch_threads() -> int:
    """The configured batch count (read from torch the first time, before any query changed
    it, when ``configure`` was not called)."""
    if _batch_threads is None:
        configure(None)
    assert _batch_threads is not None
    return _batch_threads


@contextmanager
def for_texts(count: int) -> Iterator[None]:
    """Run an encode of ``count`` texts in the calling thread with the torch threads it should
    have: ``query_threads()`` for a query, the batch count for a batch. Other threads keep theirs.
    """
    single = query_threads()
    if not single:
        yield
        return
    import torch

    batch = batch_threads()
    want = min(single, batch) if count <= QUERY_TEXTS else batch
    if torch.get_num_threads() != want:
        torch.set_num_threads(want)
    try:
        yield
    finally:
        if want != batch:
            torch.set_num_threads(batch)

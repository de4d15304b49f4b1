"""Thread settings that keep a search fast when the CPU is shared (an ingest, a generation, a
training job or another program on the same cores).

torch and faiss each carry their own GNU OpenMP runtime. By default an idle worker of either
spins for a while after every parallel region, on the core that the other thread of its team or
a neighbour needs, and one query's encode is a few hundred short parallel regions. Measured on 2
cores already busy with other work (Debian FAQ en, 2,091 chunks, all-MiniLM-L6-v2, dense p50;
``benchmarks/retriever_bench.py --only latency --latency-sides before,spin-1,passive-1,after``):

| settings                                  | alone | beside a numpy matmul loop |
| ----------------------------------------- | ----- | -------------------------- |
| libraries' defaults (spinning, 2 threads) | 75 ms | 577 ms                     |
| spinning, 1 thread per query              | 23 ms | 78 ms                      |
| passive waiting, 1 thread per query       | 20 ms | 79 ms                      |
| passive waiting, 2 threads per query      | 22 ms | 38 ms (the default)        |

- **Passive waiting** (``OMP_WAIT_POLICY=PASSIVE``) is the fix. A runtime reads the variable
  once, as it loads, so ``prefer_passive_wait`` runs before torch or faiss is imported:
  ``retriever.vectors`` calls it before importing faiss, which is before ragtune loads torch,
  and ``service.runtime.configure_torch`` again. An ``OMP_WAIT_POLICY`` the user set is kept.
- **One thread per query** only where torch's workers may still spin: torch was imported before
  the passive default could reach it, or the user chose another policy. There a one-text encode
  runs on one thread (the second row); with passive waiting the second thread is worth keeping
  (the last two rows).
  A batch (an ingest, a re-embedding) always runs on the configured count. faiss needs no
  limit: a flat or HNSW search of one query already runs on one thread (a limit measured the
  same).

``torch.set_num_threads`` is per thread for a thread that has used torch, but a thread using
torch for the first time takes the last value set by any thread. So ``for_texts`` restores the
configured count (not the calling thread's previous one) and, while queries are limited, a
batch re-asserts it: a worker thread first used during another thread's query never stays at one
thread.

``RAGTUNE_THREAD_LIMITS=0`` turns the automatic settings off (the libraries' defaults stand);
``RAGTUNE_QUERY_THREADS=N`` sets the torch threads of one query whatever the wait policy (0: no
limit). Knows nothing of indexes or models.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

LIMITS_ENV = "RAGTUNE_THREAD_LIMITS"  # "0": no automatic setting, the libraries' defaults stand
QUERY_THREADS_ENV = "RAGTUNE_QUERY_THREADS"  # torch threads of a one-text encode (0: no limit)
WAIT_POLICY_ENV = "OMP_WAIT_POLICY"  # read by each OpenMP runtime when it loads
QUERY_TEXTS = 1  # encodes of at most this many texts are queries; larger ones are batches
SPINNING_QUERY_THREADS = 1  # a query's threads where torch's workers may spin

_batch_threads: int | None = None  # the count a batch runs with; None: torch's, read once
_torch_first: bool | None = None  # torch was imported before prefer_passive_wait first ran
_torch_policy: str | None = None  # the wait policy then (torch's, when it had loaded first)


def enabled() -> bool:
    """Whether ragtune applies its automatic thread settings (``RAGTUNE_THREAD_LIMITS`` != 0)."""
    return os.environ.get(LIMITS_ENV, "1").strip() != "0"


def prefer_passive_wait() -> None:
    """Make idle OpenMP workers sleep instead of spinning, unless the user chose a policy or
    turned the settings off. Only runtimes loaded after this call see it, so the first call
    notes whether torch had loaded already (and with which policy)."""
    global _torch_first, _torch_policy
    if _torch_first is None:
        _torch_first, _torch_policy = "torch" in sys.modules, os.environ.get(WAIT_POLICY_ENV)
    if enabled():
        os.environ.setdefault(WAIT_POLICY_ENV, "PASSIVE")


def torch_waits_passively() -> bool:
    """Whether torch's OpenMP runtime loaded (or will load) with passive waiting."""
    policy = _torch_policy if _torch_first else os.environ.get(WAIT_POLICY_ENV)
    return (policy or "").strip().upper() == "PASSIVE"


def query_threads() -> int:
    """torch threads for one query's encode; 0 for no limit. ``RAGTUNE_QUERY_THREADS`` when
    set, else one thread where torch's workers may spin, else no limit."""
    raw = os.environ.get(QUERY_THREADS_ENV, "").strip()
    if raw:
        if not raw.isdigit():
            raise ValueError(f"{QUERY_THREADS_ENV}: a whole number >= 0, got {raw!r}")
        return int(raw)
    if not enabled() or torch_waits_passively():
        return 0
    return SPINNING_QUERY_THREADS


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


_seen = threading.local()


def _own_count() -> None:
    """Give a thread its configured count once, on its first encode: a thread new to torch
    takes the last count any thread set, and the generation engine sets one for its decode
    steps."""
    if getattr(_seen, "set", False):
        return
    import torch

    if torch.get_num_threads() != batch_threads():
        torch.set_num_threads(batch_threads())
    _seen.set = True


@contextmanager
def for_texts(count: int) -> Iterator[None]:
    """Run an encode of ``count`` texts in the calling thread with the torch threads it should
    have: ``query_threads()`` for a query, the batch count for a batch. Other threads keep theirs.
    """
    single = query_threads()
    if not single:
        _own_count()
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

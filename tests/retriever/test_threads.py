"""The search-latency thread settings (``retriever.threads``) apply where they claim: passive
OpenMP waiting set before faiss and torch load; where torch's workers may spin anyway, a query's
encode on one torch thread, restored after; a batch, in any thread, on the configured count. No
timings here: the latencies they buy are measured in benchmarks/retriever_bench.py
(``--only latency``)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from retriever import threads
from retriever.embedder import Embedder
from retriever.index import DocumentIn, Retriever
from retriever.sources import ResolvedModel

BATCH = 2  # the configured count in these tests (set even on a one-core machine)


class CountingModel:
    """Stands in for a SentenceTransformer: records torch's thread count at each encode."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []  # (texts, torch threads)

    def get_sentence_embedding_dimension(self) -> int:
        return 8

    def encode(self, texts: list[str], **_: Any) -> np.ndarray:
        self.seen.append((len(texts), torch.get_num_threads()))
        out = np.ones((len(texts), 8), dtype=np.float32)  # (n, dim)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture(autouse=True)
def _spinning_torch(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """As if torch had loaded before the passive default, with no policy: queries limited."""
    before = torch.get_num_threads()
    for var in (threads.LIMITS_ENV, threads.QUERY_THREADS_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(threads, "_batch_threads", None)
    monkeypatch.setattr(threads, "_torch_first", True)
    monkeypatch.setattr(threads, "_torch_policy", None)
    threads.configure(BATCH)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def model() -> CountingModel:
    return CountingModel()


@pytest.fixture
def embedder(model: CountingModel, tmp_path: Path) -> Embedder:
    return Embedder(model=model, resolved=ResolvedModel("counting", tmp_path, "path"))  # type: ignore[arg-type]


def test_one_text_on_one_thread_then_restored(embedder: Embedder, model: CountingModel) -> None:
    embedder.encode(["how do I upgrade?"])
    embedder.encode(["a chunk", "another chunk"])
    assert model.seen == [(1, 1), (2, BATCH)]
    assert torch.get_num_threads() == BATCH


def test_a_search_encodes_on_one_thread_and_a_write_on_the_batch_count(
    embedder: Embedder, model: CountingModel, tmp_path: Path
) -> None:
    rag = Retriever(tmp_path / "index", embedder)
    try:
        rag.upsert_many([DocumentIn("first text", "a"), DocumentIn("second text", "b")])
        rag.search("first", k=1, mode="dense")
    finally:
        rag.close()
    assert model.seen == [(2, BATCH), (1, 1)]


def test_a_batch_in_a_thread_first_used_during_a_query_keeps_the_batch_count(
    embedder: Embedder, model: CountingModel
) -> None:
    """A thread that first uses torch while another is inside a query takes torch's last value
    (the premise of restoring the batch count); a batch encode there still gets the batch
    count, and the query's own thread is not disturbed."""
    plain: list[int] = []

    def fresh_thread() -> None:
        plain.append(torch.get_num_threads())
        embedder.encode(["a chunk", "another chunk"])

    with threads.for_texts(1):
        worker = threading.Thread(target=fresh_thread)
        worker.start()
        worker.join()
        assert torch.get_num_threads() == 1
    assert plain == [1]
    assert model.seen == [(2, BATCH)]
    assert torch.get_num_threads() == BATCH


def test_no_limit_where_torch_waits_passively(
    embedder: Embedder, model: CountingModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(threads, "_torch_policy", "passive")  # loaded first, user's policy
    embedder.encode(["query"])
    monkeypatch.setattr(threads, "_torch_first", False)  # loads after: the variable now counts
    monkeypatch.setenv(threads.WAIT_POLICY_ENV, "PASSIVE")
    embedder.encode(["query"])
    monkeypatch.setenv(threads.WAIT_POLICY_ENV, "ACTIVE")
    embedder.encode(["query"])
    assert model.seen == [(1, BATCH), (1, BATCH), (1, 1)]


def test_the_limit_can_be_turned_off_or_set(
    embedder: Embedder, model: CountingModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(threads.LIMITS_ENV, "0")
    embedder.encode(["off"])
    monkeypatch.setenv(threads.QUERY_THREADS_ENV, "1")  # a set count holds even then
    embedder.encode(["one"])
    monkeypatch.setenv(threads.LIMITS_ENV, "1")
    monkeypatch.setenv(threads.QUERY_THREADS_ENV, "0")
    embedder.encode(["off too"])
    monkeypatch.setenv(threads.QUERY_THREADS_ENV, "2")
    embedder.encode(["two"])
    assert model.seen == [(1, BATCH), (1, 1), (1, BATCH), (1, 2)]
    monkeypatch.setenv(threads.QUERY_THREADS_ENV, "many")
    with pytest.raises(ValueError, match=threads.QUERY_THREADS_ENV):
        embedder.encode(["bad"])


@pytest.mark.parametrize(
    ("limits", "user", "want"),
    [("1", None, "PASSIVE"), ("1", "ACTIVE", "ACTIVE"), ("0", None, None)],
)
def test_passive_wait_is_a_default_only(
    monkeypatch: pytest.MonkeyPatch, limits: str, user: str | None, want: str | None
) -> None:
    monkeypatch.setenv(threads.LIMITS_ENV, limits)
    if user is None:
        monkeypatch.delenv(threads.WAIT_POLICY_ENV, raising=False)
    else:
        monkeypatch.setenv(threads.WAIT_POLICY_ENV, user)
    threads.prefer_passive_wait()
    assert os.environ.get(threads.WAIT_POLICY_ENV) == want


@pytest.mark.parametrize(
    ("first", "want"),
    [
        ("import retriever.vectors; import torch", "PASSIVE 0"),  # as ragtune loads: no limit
        ("import torch; import retriever.vectors", "PASSIVE 1"),  # torch's runtime spins
    ],
)
def test_passive_wait_is_set_before_faiss_loads(first: str, want: str) -> None:
    """In a fresh interpreter: the variable is there once ``retriever.vectors`` has imported
    faiss (an OpenMP runtime reads it as it loads), and queries are limited only when torch
    had loaded before it."""
    env = {k: v for k, v in os.environ.items() if k != threads.WAIT_POLICY_ENV}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    code = (
        "import os; from retriever import threads; "
        f"{first}; print(os.environ.get('OMP_WAIT_POLICY'), threads.query_threads())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == want

"""SIGKILL a writer at random moments, many times: acknowledged writes survive, deletes stay
deleted, and the vector index holds exactly SQLite's live chunks."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from retriever.config import RetrieverConfig
from retriever.index import Retriever
from tests.fakes import FakeEmbedder

WRITER = Path(__file__).with_name("crash_writer.py")
ROUNDS = 12


def _run_and_kill(folder: Path, seed: int, start: int, rng: random.Random) -> list[dict]:
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(folder), str(seed), str(start)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # the writer is running and has opened the index
    assert first, proc.stderr.read() if proc.stderr else "writer died"
    time.sleep(rng.uniform(0.05, 1.2))
    os.kill(proc.pid, signal.SIGKILL)
    rest = proc.stdout.read()
    proc.wait()
    return [json.loads(line) for line in [first, *rest.splitlines()] if line.strip()]


@pytest.mark.slow
def test_kill_9_loses_nothing_acknowledged(tmp_path: Path) -> None:
    rng = random.Random(7)
    expected: dict[str, str | None] = {}  # doc id -> acked text, None when acked deleted
    deleted_texts: set[str] = set()
    start = 0
    for round_no in range(ROUNDS):
        events = _run_and_kill(tmp_path, seed=round_no, start=start, rng=rng)
        in_flight = events[-1] if events[-1]["phase"] == "start" else None
        for e in events:
            if e["phase"] == "ack":
                if e["op"] in ("delete", "update"):  # the old text must never come back
                    deleted_texts.add(str(expected.get(e["id"]) or ""))
                expected[e["id"]] = None if e["op"] == "delete" else e["text"]
        start += len(events) + 1
        r = Retriever(tmp_path, FakeEmbedder(dim=128), RetrieverConfig(snapshot_every=7))
        try:
            for doc_id, text in expected.items():
                row = r.store.document(doc_id)
                allowed = {text}
                if in_flight and in_flight["id"] == doc_id:  # killed mid-write: either state
                    allowed.add(None if in_flight["op"] == "delete" else in_flight["text"])
                assert (row.text if row else None) in allowed, (round_no, doc_id)
            assert np.array_equal(np.sort(r.index_ids()), r.store.live_ids()), round_no
            for text in deleted_texts:
                if not text:
                    continue
                token = text.split()[0]
                hits = r.search(token, k=5, mode="sparse")
                assert all(not h.text.startswith(token + " ") for h in hits), token
        finally:
            r.close()
        # the in-flight write, if it landed, is now part of the state
        if in_flight:
            row_state = None
            r = Retriever(tmp_path, FakeEmbedder(dim=128), RetrieverConfig(snapshot_every=7))
            row = r.store.document(in_flight["id"])
            row_state = row.text if row else None
            r.close()
            if row_state != expected.get(in_flight["id"]):
                deleted_texts.add(str(expected.get(in_flight["id"]) or ""))
            expected[in_flight["id"]] = row_state
    assert len(expected) > 20  # the writer did real work across the rounds

"""The hybrid dense share fitted without labels: pseudo-queries with their own chunk held out,
a share chosen only when it beats the better single side beyond noise, refitted as the index
changes, and shares 0 and 1 ranking exactly as sparse and dense search do."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from retriever.fusion import pick_share
from retriever.index import FIT_MIN_CHUNKS, DocumentIn, Retriever
from retriever.pseudo import pseudo_queries
from service.fusionfit import FusionFitter
from tests.fakes import FakeEmbedder
from tests.retriever.test_index import _Noise

FILLER = "Background words stand here to fill the edges of this chunk. " * 2


def test_pseudo_queries_come_from_the_middle_of_chunks_of_longer_documents() -> None:
    middle = "Packages are installed with the apt tool from a mirror."
    rows = [
        (1, "a", FILLER + middle + " " + FILLER),
        (2, "a", FILLER + "Removing a package keeps its configuration files." + FILLER),
        (3, "solo", FILLER + "This document has only one chunk to its name here." + FILLER),
        (4, "b", "Too short. " + "x" * 10),
        (5, "b", "Edge sentence right at the start of the chunk text." + "y" * 20),
    ]
    queries = pseudo_queries(rows, n=10, seed=1)
    assert queries and {q.doc_id for q in queries} == {"a"}  # solo has one chunk, b no middle
    for q in queries:
        own = dict((cid, text) for cid, _, text in rows)[q.held_out]
        start = own.index(q.text)
        assert start >= 80 and start + len(q.text) <= len(own) - 80
    assert pseudo_queries(rows, n=10, seed=1) == queries  # seeded
    assert len(pseudo_queries(rows, n=1, seed=1)) == 1


def test_a_share_is_picked_only_when_it_beats_the_better_side_beyond_noise() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(300)
    noisy = {w / 10: base + rng.normal(0, 0.3, 300) * (0 < w < 10) for w in range(11)}
    noisy[0.0] = base + 0.001  # sparse a hair better than dense
    share, why = pick_share(noisy)
    assert share == 0.0 and "noise" in why or "no fused" in why
    clear = {w / 10: base + (0.1 if w == 4 else 0.0) for w in range(11)}
    assert pick_share(clear)[0] == 0.4
    with pytest.raises(ValueError, match="single sides"):
        pick_share({0.5: base})


def _docs(n: int) -> list[DocumentIn]:
    words = [f"topic{i} detail{i} matter{i}" for i in range(n)]
    return [
        DocumentIn(
            "\n\n".join(
                f"{FILLER}Paragraph {j} explains {words[i]} for readers of part {j}. {FILLER}"
                for j in range(3)
            ),
            f"d{i}",
        )
        for i in range(n)
    ]


def test_noise_vectors_are_fitted_out_and_the_fit_follows_the_index(tmp_path: Path) -> None:
    r = Retriever(tmp_path, _Noise(dim=32, name="noise"))
    r.upsert_many(_docs(90))
    assert r.chunk_count >= FIT_MIN_CHUNKS and r.fusion_fit_due
    report = r.fit_fusion(queries=120)
    assert report["method"] == "pseudo-queries" and report["queries"]["en"] >= 30, report
    assert report["weights"]["en"] == 0.0, report  # random vectors never beat BM25
    assert report["recall"]["en"]["0.0"] > report["recall"]["en"]["1.0"]
    assert r.dense_weight_for("topic3 detail3") == 0.0 and not r.fusion_fit_due
    # share 0 ranks exactly as sparse search does at the same depth (hybrid fetches 50)
    query = "explains topic7 detail7"
    hybrid = [(h.chunk_id, h.doc_id) for h in r.search(query, 8, mode="hybrid")]
    sparse = [(h.chunk_id, h.doc_id) for h in r.search(query, 50, mode="sparse")]
    assert hybrid == sparse[:8]
    scores = [h.score for h in r.search(query, 8, mode="hybrid")]
    assert scores[0] == 1.0 and all(0.0 <= s <= 1.0 for s in scores)  # the fused scale
    assert r.fusion_shares()["method"] == "pseudo-queries"
    r.config.fusion = "rrf"  # the fit was made for weighted fusion: not used for rrf
    assert r.dense_weight_for("topic3 detail3") == 0.5 and r.fusion_fit_due
    r.config.fusion = "weighted"
    r.upsert_many(_docs(130)[90:])  # a quarter more: due again
    assert r.fusion_fit_due
    r.close()


def test_the_service_fitter_fits_when_due_and_not_while_reindexing(tmp_path: Path) -> None:
    r = Retriever(tmp_path, FakeEmbedder())
    r.upsert_many(_docs(90))
    running = SimpleNamespace(status=lambda: SimpleNamespace(state="running"))
    state = SimpleNamespace(retriever=r, reindexer=running)
    fitter = FusionFitter(state)
    assert not fitter.run_once()  # a re-embedding runs: wait
    state.reindexer = SimpleNamespace(status=lambda: SimpleNamespace(state="idle"))
    assert fitter.run_once() and fitter.fits == 1 and "en" in fitter.last["weights"]
    assert not fitter.run_once()  # fitted: not due again until the index changes
    r.close()

"""A retriever job through the real API on loopback: the worker process trains the embedder,
the index is re-embedded in the background and switched while clients keep searching and
writing, no request fails and no write is lost; then rollback, and the guards around it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.app import create_app
from service.settings import Limits, Settings
from tests.helpers import serve_on_loopback
from tests.tuner.test_retriever_tuning import DOCS


def _loader(tiny_llama: Path, base: Path):
    from retriever.embedder import load_embedder
    from retriever.index import Retriever
    from service.adapters import AdapterSet
    from service.generation.engine import GenerationEngine
    from tuner.models import load_generator

    def load(state) -> None:  # noqa: ANN001 - service.app.AppState
        settings = state.settings
        state.embedder = load_embedder(str(base))
        state.generator = load_generator(str(tiny_llama), cache_dir=settings.data_dir / "m")
        state.adapters = AdapterSet(state.generator, settings.data_dir / "adapters")
        state.engine = GenerationEngine(
            state.generator, metrics=state.metrics, adapters=state.adapters
        )
        state.retriever = Retriever(settings.index_dir, state.embedder)

    return load


def _wait(get, done, timeout: float = 120.0) -> dict:  # noqa: ANN001 - callables
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = get()
        if done(body):
            return body  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"timed out: {body}")


@pytest.mark.slow
def test_retriever_job_switches_the_index_under_load_and_rolls_back(
    tiny_llama: Path, tmp_path: Path
) -> None:
    from tests.tuner.test_embed_train import _tiny_st

    base = tmp_path / "st"
    _tiny_st(tmp_path / "bert").save(str(base))
    limits = Limits(rate_limit_per_minute=0)  # off: the clients below hammer it on purpose
    settings = Settings(generator=str(tiny_llama), embedder=str(base), limits=limits)
    app = create_app(settings, loader=_loader(tiny_llama, base))
    url, server = serve_on_loopback(app)
    state = app.state.ragtune
    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            docs = [{"id": k, "text": v} for k, v in DOCS.items()]
            assert c.post("/v1/documents", json={"documents": docs}).status_code == 201
            job = c.post(
                "/v1/tune/jobs",
                json={
                    "component": "retriever",
                    "method": "full",
                    "dataset": {"synthetic": {"max_examples": 50}},
                    "hyperparameters": {"max_steps": 3, "batch_size": 4, "learning_rate": 1e-2},
                    "retriever": {"window": [0, 10]},
                },
            )
            assert job.status_code == 202, job.text
            job_id = job.json()["id"]

            stop, failures, served, written = threading.Event(), [], [0], []

            def searcher() -> None:
                with httpx.Client(base_url=url, timeout=30) as s:
                    while not stop.is_set():
                        r = s.post("/v1/search", json={"query": "apt grub kernel", "k": 5})
                        if r.status_code != 200 or not r.json()["results"]:
                            failures.append(r.text)
                        served[0] += 1

            def writer() -> None:
                with httpx.Client(base_url=url, timeout=30) as w:
                    i = 0
                    while not stop.is_set():
                        text = f"late {i} bash shell login user disk {i % 7} file."
                        r = w.post("/v1/documents", json={"id": f"late{i}", "text": text})
                        (written if r.status_code == 201 else failures).append(r.text)
                        i += 1
                        time.sleep(0.05)

            threads = [threading.Thread(target=f) for f in (searcher, searcher, writer)]
            for t in threads:
                t.start()
            done = _wait(
                lambda: c.get(f"/v1/tune/jobs/{job_id}").json(),
                lambda j: j["state"] in ("succeeded", "failed"),
            )
            assert done["state"] == "succeeded" and done["component"] == "retriever", done
            switched = _wait(  # started by the runner once it sees the worker exit
                lambda: c.get("/v1/index/reindex").json(),
                lambda s: s["reason"] == f"job {job_id}" and s["state"] != "running",
            )
            time.sleep(0.5)  # writes after the switch too
            stop.set()
            for t in threads:
                t.join()
            assert switched["state"] == "succeeded" and switched["result"]["switched"], switched
            assert switched["reason"] == f"job {job_id}"
            assert failures == [] and served[0] > 0 and len(written) > 0

            index = c.get("/v1/index").json()
            adapter = done["adapter"]
            assert index["embedder"]["adapter"] == adapter
            assert index["documents"] == len(DOCS) + len(written)
            retriever = state.retriever
            live = retriever.store.live_ids()
            assert np.array_equal(np.sort(retriever.index_ids()), live)  # every write is in it
            for i in range(len(written)):  # embedded by the new embedder: its own text scores 1
                text = f"late {i} bash shell login user disk {i % 7} file."
                hits = retriever.search(text, k=len(live), mode="dense")
                assert f"late{i}" in [h.doc_id for h in hits if h.score > 0.999], i

            r = c.delete(f"/v1/adapters/{adapter}")
            assert r.status_code == 409 and r.json()["error"]["code"] == "adapter_in_use"
            r = c.post(f"/v1/adapters/{adapter}/promote")
            assert r.status_code == 409 and "re-embedding" in r.json()["error"]["message"]
            assert c.post("/v1/index/reindex", json={"adapter": "nope-v1"}).status_code == 404
            both = {"adapter": adapter, "rollback": True}
            assert c.post("/v1/index/reindex", json=both).status_code == 422

            from service.loading import index_embedder

            assert index_embedder(settings).identity == retriever.embedder.identity  # a restart

            assert c.post("/v1/index/reindex", json={"rollback": True}).status_code == 202
            back = _wait(
                lambda: c.get("/v1/index/reindex").json(), lambda s: s["state"] != "running"
            )
            assert back["state"] == "succeeded" and back["result"]["switched"], back
            assert c.get("/v1/index").json()["embedder"]["adapter"] is None
            r = c.delete(f"/v1/adapters/{adapter}")
            assert r.status_code == 409 and "rollback target" in r.json()["error"]["message"]
            assert c.delete(f"/v1/adapters/{adapter}", params={"force": True}).status_code == 200
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        time.sleep(0.5)

"""PEFT adapters on the shared generator: loaded and unloaded at runtime, chosen per request."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.helpers import make_lora, tiny_loader


@pytest.fixture
def client(tiny_llama: Path, tmp_path: Path):
    data = tmp_path / "data"
    make_lora(tiny_llama, data / "adapters" / "alpha", seed=1)
    make_lora(tiny_llama, data / "adapters" / "beta", seed=2)
    (data / "adapters" / "pickled").mkdir()
    (data / "adapters" / "pickled" / "adapter_config.json").write_text("{}")
    (data / "adapters" / "pickled" / "adapter_model.bin").write_bytes(b"not loaded")

    settings = Settings(data_dir=data, generator=str(tiny_llama))
    with TestClient(
        create_app(settings, loader=tiny_loader(tiny_llama, tmp_path, adapters=data / "adapters")),
        base_url="http://127.0.0.1",
    ) as c:
        yield c


def _ask(client: TestClient, **body: object) -> dict:
    r = client.post("/v1/query", json={"question": "what is debian ?", "max_new_tokens": 8, **body})
    assert r.status_code == 200, r.text
    return r.json()


def test_adapters_load_switch_and_unload_at_runtime(client: TestClient) -> None:
    listed = client.get("/v1/adapters").json()
    assert listed["loaded"] == [] and listed["available"] == ["alpha", "beta"]  # no pickles
    assert [a["id"] for a in listed["adapters"]] == ["alpha", "beta"]
    assert client.post("/v1/query", json={"question": "q", "mode": "ft"}).status_code == 409
    base = _ask(client, mode="base")["answer"]
    assert client.post("/v1/adapters/alpha/load").json() == {"loaded": ["alpha"]}
    ft = _ask(client, mode="ft")
    assert ft["adapter"] == "alpha" and ft["answer"] != base
    assert _ask(client, mode="base")["answer"] == base  # adapters off for base requests
    client.post("/v1/adapters/beta/load")
    assert client.post("/v1/query", json={"question": "q", "mode": "ft"}).status_code == 409
    beta = _ask(client, mode="ft", adapter="beta")["answer"]
    assert (
        beta != ft["answer"] and _ask(client, mode="ft", adapter="alpha")["answer"] == ft["answer"]
    )
    models = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert models[1:] == ["alpha", "beta"]
    client.post("/v1/adapters/alpha/unload")
    assert client.get("/v1/adapters").json()["loaded"] == ["beta"]
    again = _ask(client, mode="ft", adapter="alpha")  # in the registry: loaded again on use
    assert (
        again["answer"] == ft["answer"] and "alpha" in client.get("/v1/adapters").json()["loaded"]
    )
    gone = client.post("/v1/query", json={"question": "q", "adapter": "gone"})
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "adapter_not_found"


def test_bad_adapter_names_and_pickles_are_refused(client: TestClient) -> None:
    for name in ("pickled", "no-such", ".hidden", "a" * 65):
        r = client.post(f"/v1/adapters/{name}/load")
        assert r.status_code == 404 and r.json()["error"]["code"] == "adapter_not_found", name
    assert client.post("/v1/adapters/..%2Falpha/load").status_code == 404  # never a path
    assert client.get("/v1/adapters").json()["loaded"] == []


def test_chat_model_picks_the_adapter(client: TestClient) -> None:
    client.post("/v1/adapters/beta/load")
    msgs = [{"role": "user", "content": "what is debian ?"}]
    model = client.get("/v1/models").json()["data"][0]["id"]
    plain = client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": msgs, "max_tokens": 6, "retrieval": False},
    )
    tuned = client.post(
        "/v1/chat/completions",
        json={"model": "beta", "messages": msgs, "max_tokens": 6, "retrieval": False},
    )
    assert plain.status_code == tuned.status_code == 200
    a = plain.json()["choices"][0]["message"]["content"]
    b = tuned.json()["choices"][0]["message"]["content"]
    assert a != b


def test_promoted_adapter_serves_ft_and_stale_ones_are_marked(
    client: TestClient, tiny_llama: Path, tmp_path: Path
) -> None:
    import shutil

    from tuner.registry import Registry

    doc = client.post("/v1/documents", json={"id": "d1", "text": "debian is a linux system ."})
    assert doc.status_code in (200, 201), doc.text
    data = tmp_path / "data"
    registry = Registry(data / "adapters")
    lora = make_lora(tiny_llama, tmp_path / "gamma-src", seed=3)
    record = registry.save(
        lambda folder: shutil.copytree(lora, folder, dirs_exist_ok=True),
        name="gamma",
        base_model=str(tiny_llama),
        source_documents={"d1": doc.json()["documents"][0]["version"]},
    )
    assert record.id == "gamma-v1"
    r = client.post("/v1/adapters/gamma-v1/promote")
    assert r.status_code == 200 and r.json()["promoted"]
    ft = _ask(client, mode="ft")  # nothing loaded by hand: the promoted adapter is used
    assert ft["adapter"] == "gamma-v1" and "gamma-v1" in client.get("/v1/adapters").json()["loaded"]
    listed = {a["id"]: a for a in client.get("/v1/adapters").json()["adapters"]}
    assert not listed["gamma-v1"]["stale"]
    client.put("/v1/documents/d1", json={"text": "debian is a system of the user ."})
    listed = {a["id"]: a for a in client.get("/v1/adapters").json()["adapters"]}
    assert listed["gamma-v1"]["stale"] and "d1" in listed["gamma-v1"]["stale_reason"]
    refused = client.delete("/v1/adapters/gamma-v1")
    assert refused.status_code == 409, refused.text  # promoted: needs force
    assert client.delete("/v1/adapters/gamma-v1?force=true").status_code == 200
    assert "gamma-v1" not in client.get("/v1/adapters").json()["loaded"]
    assert client.get("/v1/adapters/gamma-v1").status_code == 404


def _state(client: TestClient):  # noqa: ANN202 - service.state.AppState
    return client.app.state.ragtune  # type: ignore[attr-defined]


def test_the_base_model_is_shown_by_name_not_by_folder(
    client: TestClient, tiny_llama: Path
) -> None:
    listed = client.get("/v1/adapters")
    shown = client.get("/v1/adapters/alpha")
    assert [a["base_model"] for a in listed.json()["adapters"]] == [tiny_llama.name] * 2
    assert shown.json()["base_model"] == tiny_llama.name
    assert str(tiny_llama) not in listed.text + shown.text


def test_an_adapter_a_request_holds_is_neither_unloaded_nor_deleted(client: TestClient) -> None:
    from service.pipeline import Ask

    pipeline = _state(client).pipeline()
    prepared = pipeline.prepare(Ask.question("what is debian ?", mode="ft", adapter="alpha"))
    for r in (client.post("/v1/adapters/alpha/unload"), client.delete("/v1/adapters/alpha")):
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "adapter_in_use"
    assert client.get("/v1/adapters").json()["loaded"] == ["alpha"]
    assert client.get("/v1/adapters/alpha").status_code == 200  # still in the registry
    answer = pipeline.submit(prepared)
    answer.request.wait(timeout=60)  # the held request runs to its end
    assert answer.request.finish_reason in ("stop", "length")
    del prepared, answer
    assert client.delete("/v1/adapters/alpha").status_code == 200
    assert client.get("/v1/adapters").json()["loaded"] == []
    assert client.get("/v1/adapters/alpha").status_code == 404


def test_an_adapter_gone_before_submit_is_a_503_not_a_500(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.errors import ServiceError
    from service.pipeline import Ask

    state = _state(client)
    pipeline = state.pipeline()
    prepared = pipeline.prepare(Ask.question("what is debian ?", mode="ft", adapter="alpha"))

    def gone(*_: object, **__: object) -> None:
        raise LookupError("adapter 'alpha' is not loaded")

    monkeypatch.setattr(state.engine, "submit", gone)
    with pytest.raises(ServiceError) as refused:
        pipeline.submit(prepared)
    assert refused.value.status == 503 and refused.value.code == "adapter_unloaded"
    assert "'alpha'" in refused.value.message


def test_user_text_over_the_budget_is_refused_before_its_adapter_loads(
    client: TestClient,
) -> None:
    long = " ".join(["debian"] * 3000)
    body = {"question": long[:3999], "mode": "ft", "adapter": "alpha", "max_new_tokens": 4}
    r = client.post("/v1/query", json=body)
    assert r.status_code == 422 and r.json()["error"]["code"] == "question_too_long"
    assert client.get("/v1/adapters").json()["loaded"] == []  # no load for a refused request


def test_a_batch_whose_adapter_vanished_fails_alone_with_one_line(
    tiny_llama: Path, tmp_path: Path
) -> None:
    from contextlib import contextmanager

    from service.adapters import AdapterNotFound
    from service.generation.engine import GenerationEngine
    from service.generation.request import GenerationFailed
    from tuner.models import load_generator

    class Vanishing:
        """An adapter set that says 'ghost' is loaded, but it is gone when its batch starts."""

        change_waiting, generation = False, 0

        def loaded(self) -> list[str]:
            return ["ghost"]

        @contextmanager
        def active(self, name: str | None):  # noqa: ANN202
            if name is not None:
                raise AdapterNotFound(name, "not loaded")
            yield

    generator = load_generator(str(tiny_llama), cache_dir=tmp_path / "m")
    engine = GenerationEngine(generator, adapters=Vanishing())
    try:
        msgs = [{"role": "user", "content": "what is debian ?"}]
        ghost = engine.submit(msgs, 4, adapter="ghost")
        base = engine.submit(msgs, 4)
        with pytest.raises(GenerationFailed) as failed:
            ghost.wait(timeout=60)
        assert "'ghost'" in str(failed.value) and "no longer loaded" in str(failed.value)
        assert base.wait(timeout=60).finish_reason in ("stop", "length")
        again = engine.submit(msgs, 4)  # the engine serves on
        assert again.wait(timeout=60).finish_reason in ("stop", "length")
    finally:
        engine.close()

"""Adapters by name: one the registry holds is loaded on first use, at most
``max_loaded_adapters`` stay loaded (least recently used unloaded first, never one a request
holds), and no error names a folder."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.adapters import AdapterNotFound, AdaptersBusy, AdapterSet
from service.app import create_app
from service.settings import Limits, Settings
from tests.helpers import make_lora, tiny_loader

NAMES = ("alpha", "beta", "gamma")


@pytest.fixture(scope="module")
def registry(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three LoRAs for the tiny Llama, as hand-copied registry folders (built once)."""
    root = tmp_path_factory.mktemp("registry") / "adapters"
    for seed, name in enumerate(NAMES, 1):
        make_lora(tiny_llama, root / name, seed=seed)
    return root


@pytest.fixture
def client(tiny_llama: Path, registry: Path, tmp_path: Path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(registry, data / "adapters")
    settings = Settings(
        data_dir=data, generator=str(tiny_llama), limits=Limits(max_loaded_adapters=2)
    )
    with TestClient(
        create_app(settings, loader=tiny_loader(tiny_llama, tmp_path, adapters=data / "adapters")),
        base_url="http://127.0.0.1",
    ) as c:
        yield c


def _ft(client: TestClient, adapter: str) -> dict:
    body = {"question": "what is debian ?", "mode": "ft", "adapter": adapter, "max_new_tokens": 4}
    r = client.post("/v1/query", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _loaded(client: TestClient) -> list[str]:
    return client.get("/v1/adapters").json()["loaded"]  # type: ignore[no-any-return]


def test_a_named_registry_adapter_serves_without_a_load(client: TestClient) -> None:
    assert _loaded(client) == []
    assert _ft(client, "alpha")["adapter"] == "alpha"
    assert _loaded(client) == ["alpha"]
    msgs = [{"role": "user", "content": "what is debian ?"}]
    chat = client.post(
        "/v1/chat/completions",
        json={"model": "beta", "messages": msgs, "max_tokens": 4, "retrieval": False},
    )
    assert chat.status_code == 200, chat.text
    assert _loaded(client) == ["alpha", "beta"]


def test_at_most_max_loaded_stay_loaded_least_recently_used_out_first(
    client: TestClient,
) -> None:
    _ft(client, "alpha")
    _ft(client, "beta")
    _ft(client, "alpha")  # beta is now the least recently used
    _ft(client, "gamma")
    assert _loaded(client) == ["alpha", "gamma"]
    _ft(client, "beta")  # alpha is the least recently used now
    assert _loaded(client) == ["beta", "gamma"]


def test_unknown_names_are_404_and_no_message_names_a_folder(
    client: TestClient, tmp_path: Path
) -> None:
    for r in (
        client.post("/v1/query", json={"question": "q", "mode": "ft", "adapter": "nope"}),
        client.post("/v1/adapters/nope/load"),
    ):
        assert r.status_code == 404, r.text
        error = r.json()["error"]
        assert error["code"] == "adapter_not_found" and "'nope'" in error["message"]
        assert str(tmp_path) not in r.text and "data/adapters" not in r.text
    assert _loaded(client) == []


def test_a_held_adapter_is_never_unloaded_to_make_room(tiny_llama: Path, registry: Path) -> None:
    from tuner.models import load_generator

    generator = load_generator(str(tiny_llama), cache_dir=registry.parent / "m")
    adapters = AdapterSet(generator, registry, max_loaded=1)
    hold = adapters.use("alpha")
    with pytest.raises(AdaptersBusy):
        adapters.use("beta")  # alpha is picked but not yet generated
    assert adapters.loaded() == ["alpha"]

    class Finished:
        done = threading.Event()

    Finished.done.set()
    hold.request = Finished()  # its answer finished: alpha may go
    adapters.use("beta")
    assert adapters.loaded() == ["beta"]
    with pytest.raises(AdapterNotFound) as missing:
        adapters.use("nope")
    assert str(registry) not in str(missing.value)


def test_two_first_uses_at_once_load_once(tiny_llama: Path, registry: Path) -> None:
    from tuner.models import load_generator

    generator = load_generator(str(tiny_llama), cache_dir=registry.parent / "m")
    adapters = AdapterSet(generator, registry, max_loaded=2)
    start = threading.Barrier(4)
    holds = []

    def first_use() -> None:
        start.wait()
        holds.append(adapters.use("gamma"))

    threads = [threading.Thread(target=first_use) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(holds) == 4 and adapters.loaded() == ["gamma"]
    assert adapters.generation == 1  # one load


def test_an_admin_unload_racing_an_eviction_fails_no_request(
    tiny_llama: Path, registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An admin unloads the very adapter a first use is evicting, between its pick and its
    unload: the first use still gets its adapter (no 404 for an unrelated request)."""
    import service.adapters as module
    from tuner.models import load_generator

    generator = load_generator(str(tiny_llama), cache_dir=registry.parent / "m")
    adapters = AdapterSet(generator, registry, max_loaded=1)
    adapters.load("alpha")
    admin: list[BaseException | None] = []

    def unload_alpha() -> None:
        try:
            adapters.unload("alpha")
            admin.append(None)
        except (AdapterNotFound, RuntimeError) as exc:
            admin.append(exc)

    info = module.log.info

    def racing(msg: str, *args: object) -> None:
        if "to make room" in msg:  # the victim is picked, its unload not started
            racer = threading.Thread(target=unload_alpha)
            racer.start()
            racer.join(timeout=1)  # runs to its end unless the eviction holds it off
        info(msg, *args)

    monkeypatch.setattr(module.log, "info", racing)
    hold = adapters.use("beta")
    assert hold.name == "beta" and adapters.loaded() == ["beta"]
    for _ in range(100):  # the admin's unload ends too, with or without an error
        if admin:
            break
        threading.Event().wait(0.05)
    assert len(admin) == 1 and adapters.loaded() == ["beta"]


def test_a_damaged_adapter_is_a_409_naming_it_and_the_others_still_serve(
    client: TestClient, tmp_path: Path
) -> None:
    """A corrupt weights file was a 500 (SafetensorError: header too large) on first use."""
    data_dir = client.app.state.ragtune.settings.data_dir  # type: ignore[attr-defined]
    weights = Path(data_dir) / "adapters" / "gamma" / "adapter_model.safetensors"
    weights.write_bytes(b"\xff" * 64)
    before = _ft(client, "alpha")["answer"]
    body = {"question": "what is debian ?", "mode": "ft", "adapter": "gamma", "max_new_tokens": 4}
    r = client.post("/v1/query", json=body)
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert error["code"] == "adapter_unusable" and "'gamma'" in error["message"]
    assert str(data_dir) not in r.text and "safetensors_rust" not in r.text
    assert _loaded(client) == ["alpha"]
    assert _ft(client, "alpha")["answer"] == before  # the model was not touched
    weights.unlink()
    r = client.post("/v1/query", json=body)
    assert r.status_code in (404, 409) and "gamma" in r.text and str(data_dir) not in r.text


@pytest.fixture
def misfit(registry: Path, tmp_path: Path) -> Path:
    """The registry plus ``misfit``: gamma's weights under a config whose rank is doubled (the
    safetensors header reads fine; the shapes do not fit the layers the config asks for)."""
    import json
    import shutil

    root = tmp_path / "adapters"
    shutil.copytree(registry, root)
    shutil.copytree(root / "gamma", root / "misfit")
    config = json.loads((root / "misfit" / "adapter_config.json").read_text())
    config["r"] *= 2
    (root / "misfit" / "adapter_config.json").write_text(json.dumps(config))
    return root


def _logits(generator: object) -> object:
    import torch

    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        return generator.model(input_ids=ids).logits  # type: ignore[attr-defined]


def test_an_adapter_that_does_not_fit_evicts_nothing_and_leaves_no_layers(
    tiny_llama: Path, misfit: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rank mismatch was caught only after the LRU adapter was unloaded, left ``misfit``
    registered in the model, and was retried (evicting another) on every request naming it."""
    import json

    from service.adapters import AdapterUnusable
    from tuner.models import load_generator

    generator = load_generator(str(tiny_llama), cache_dir=misfit.parent / "m")
    adapters = AdapterSet(generator, misfit, max_loaded=1)
    adapters.load("alpha")
    before, generation = _logits(generator), adapters.generation
    tries: list[str] = []
    load = AdapterSet._load

    def counted(self: AdapterSet, name: str, *args: object) -> None:
        tries.append(name)
        load(self, name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(AdapterSet, "_load", counted)
    for _ in range(2):
        with pytest.raises(AdapterUnusable, match="'misfit'"):
            adapters.use("misfit")
        assert adapters.loaded() == ["alpha"]
        assert list(generator.model.peft_config) == ["alpha"]
    assert tries == ["misfit"]  # the second request is refused without a load
    assert adapters.generation == generation  # nothing changed: cached keys stay valid
    with adapters.active("alpha"):
        assert (_logits(generator) == before).all()  # type: ignore[attr-defined]
    adapters.use("beta")
    assert adapters.loaded() == ["beta"] and list(generator.model.peft_config) == ["beta"]
    config_file = misfit / "misfit" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["r"] //= 2  # fixed on disk: tried again
    config_file.write_text(json.dumps(config) + "\n")
    adapters.use("misfit")
    assert adapters.loaded() == ["misfit"] and tries == ["misfit", "beta", "misfit"]


def test_a_first_adapter_that_does_not_fit_leaves_the_base_model_as_it_was(
    tiny_llama: Path, misfit: Path
) -> None:
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    from service.adapters import AdapterUnusable
    from tuner.models import load_generator

    generator = load_generator(str(tiny_llama), cache_dir=misfit.parent / "m")
    base, before = generator.model, _logits(generator)
    keys = sorted(base.state_dict())
    adapters = AdapterSet(generator, misfit, max_loaded=1)
    with pytest.raises(AdapterUnusable):
        adapters.load("misfit")
    assert generator.model is base and not isinstance(base, PeftModel)
    assert not any(isinstance(m, BaseTunerLayer) for m in base.modules())
    assert sorted(base.state_dict()) == keys and not hasattr(base, "peft_config")
    assert (_logits(generator) == before).all()  # type: ignore[attr-defined]
    adapters.load("alpha")
    assert list(generator.model.peft_config) == ["alpha"]

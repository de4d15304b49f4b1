"""/v1/files and /v1/tune/jobs through the real app, with the fake trainer as the worker."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.settings import ApiKey, Limits, Settings
from tests.helpers import app_clients, poll_state
from tests.tuner.fake_trainer import make_runner
from tuner.config import recipe_from_dict

CHAT = (
    b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
)
KEYS = {s: f"key-for-{s}-0123456789" for s in ("read", "write")}


@pytest.fixture
def make_client(tiny_llama: Path, tmp_path: Path):
    with app_clients(tiny_llama, tmp_path) as make_app_client:

        def make(**settings: object) -> TestClient:
            def setup(state) -> None:  # noqa: ANN001 - service.app.AppState
                state.jobs = make_runner(state.settings.data_dir, step_s=0.1)

            return make_app_client(Settings(generator=str(tiny_llama), **settings), setup)  # type: ignore[arg-type]

        yield make


def upload(client: TestClient, data: bytes, name: str = "train.jsonl", headers: dict | None = None):
    files = {"file": (name, data, "application/jsonl")}
    return client.post("/v1/files", files=files, headers=headers)


def poll(client: TestClient, job_id: str, state: str, timeout: float = 8.0) -> dict:
    return poll_state(client, f"/v1/tune/jobs/{job_id}", state, timeout)


def test_upload_list_and_bad_uploads(make_client) -> None:
    client = make_client()
    r = upload(client, CHAT * 3 + b"\n", name="../../etc/passwd.jsonl")
    assert r.status_code == 201, r.text
    meta = r.json()
    assert meta["name"] == "passwd.jsonl" and meta["id"].startswith("file-")
    assert (meta["bytes"], meta["lines"], meta["format"]) == (len(CHAT) * 3 + 1, 3, "chat")
    stored = Path(client.app.state.ragtune.settings.data_dir) / "files" / f"{meta['id']}.jsonl"  # type: ignore[attr-defined]
    assert stored.read_bytes() == CHAT * 3 + b"\n"
    assert [f["id"] for f in client.get("/v1/files").json()["files"]] == [meta["id"]]
    qa = upload(client, b'{"question": "q", "answer": "a"}\n').json()
    assert qa["format"] == "qa"
    for bad, where in (
        (CHAT + b"{not json\n", "line 2: not JSON"),
        (CHAT + CHAT + b"\xff\xfe\n", "line 3: not UTF-8"),
        (CHAT + b"[1, 2]\n", "line 2: a JSON object"),
        (CHAT + b'{"prompt": "p", "completion": "c"}\n', "line 2: prompt_completion"),
        (b'{"foo": 1}\n', "line 1: no known format"),
        (b"\n\n", "no records"),
    ):
        r = upload(client, bad)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_file", bad
        assert where in r.json()["error"]["message"], r.json()
    assert len(client.get("/v1/files").json()["files"]) == 2


def test_upload_over_the_body_limit_is_413(make_client) -> None:
    client = make_client(limits=Limits(max_body_bytes=500))
    assert upload(client, CHAT * 10).status_code == 413


def test_create_poll_and_cancel_jobs(make_client) -> None:
    client = make_client()
    file_id = upload(client, CHAT * 8).json()["id"]
    hp = {"max_steps": 4, "eval_every": 2, "checkpoint_every": 2}
    r = client.post(
        "/v1/tune/jobs",
        json={
            "component": "generator",
            "method": "lora",
            "dataset": file_id,
            "hyperparameters": hp,
        },
    )
    assert r.status_code == 202, r.text
    assert set(r.json()) == {"id", "state"} and r.json()["state"] in ("validating", "queued")
    job = poll(client, r.json()["id"], "succeeded")
    assert job["progress"] == {"step": 4, "total": 4} and job["adapter"] == "generator-lora-v1"
    assert job["loss_curve"] == [[1, 2.0], [2, 1.0], [3, 2 / 3], [4, 0.5]]
    assert job["val_losses"] == [[2, 0.5], [4, 0.25]] and job["error"] is None
    assert client.post(f"/v1/tune/jobs/{job['id']}/cancel").status_code == 409

    long = {"max_steps": 500}
    body = {"method": "lora", "dataset": {"file_id": file_id}, "hyperparameters": long}
    job_id = client.post("/v1/tune/jobs", json={**body, "name": "long"}).json()["id"]
    poll(client, job_id, "running")
    r = client.post(f"/v1/tune/jobs/{job_id}/cancel")
    assert r.status_code == 202 and r.json()["cancel_requested"]
    cancelled = poll(client, job_id, "cancelled", timeout=4)
    assert cancelled["progress"]["step"] < 500
    listed = client.get("/v1/tune/jobs").json()["jobs"]
    assert [j["id"] for j in listed] == [job_id, job["id"]] and "loss_curve" not in listed[0]


def test_invalid_jobs_are_422_and_unknown_ids_404(make_client) -> None:
    client = make_client()
    file_id = upload(client, CHAT).json()["id"]
    edge, recipe = "invalid_request", "invalid_recipe"  # the body's schema; the recipe's checks
    for body, code, words in (
        ({"dataset": file_id, "method": "magic"}, edge, "method"),
        ({"dataset": file_id, "hyperparameters": {"learning_rate": 0}}, edge, "learning_rate"),
        ({"dataset": file_id, "hyperparameters": {"nope": 1}}, edge, "nope"),
        ({"dataset": file_id, "hyperparameters": {"max_steps": "3"}}, edge, "max_steps"),
        ({"dataset": {"file_id": file_id, "weight": "1"}}, edge, "weight"),
        ({"dataset": file_id, "parent": 3}, edge, "parent"),
        ({"dataset": file_id, "component": "reranker"}, edge, "component"),
        ({"dataset": file_id, "component": "retriever", "method": "dora"}, recipe, "retriever"),
        ({"dataset": file_id, "retriever": {"negatives": 2}}, recipe, "component retriever only"),
        ({"dataset": file_id, "name": "../x"}, edge, "name"),
        ({"dataset": "file-0000000000000000"}, recipe, "no uploaded file"),
        ({"dataset": "../../secrets"}, edge, "dataset"),
        ({"dataset": {"synthetic": {"kind": "poetry"}}}, edge, "kind"),
        ({"dataset": {"file_id": file_id, "synthetic": {}}}, recipe, "exactly one"),
        (
            {"dataset": file_id, "hyperparameters": {"val_fraction": 0.6, "test_fraction": 0.5}},
            recipe,
            "hyperparameters.test_fraction",
        ),
    ):
        r = client.post("/v1/tune/jobs", json=body)
        assert r.status_code == 422 and r.json()["error"]["code"] == code, (body, r.json())
        assert words in json.dumps(r.json()), (body, r.json())
    r = client.post("/v1/tune/jobs", json={"dataset": file_id, "base_model": "/etc"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    assert client.get("/v1/tune/jobs").json() == {"jobs": []}
    for method, path in (("get", "/v1/tune/jobs/job-x"), ("post", "/v1/tune/jobs/job-x/cancel")):
        r = client.request(method, path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"


def test_bad_data_fails_the_job_with_its_problems(make_client) -> None:
    client = make_client()
    file_id = upload(client, CHAT).json()["id"]
    r = client.post("/v1/tune/jobs", json={"dataset": file_id, "name": "baddata"})
    job = poll(client, r.json()["id"], "failed")
    assert job["problems"] == [[3, "empty answer"], [7, "not JSON"]] and "line 3" in job["error"]


def test_scopes(make_client) -> None:
    keys = [ApiKey(name=s, key=k, scopes=[s]) for s, k in KEYS.items()]  # type: ignore[arg-type]
    client = make_client(auth_disabled=False, api_keys=keys)
    read, write = ({"Authorization": f"Bearer {KEYS[s]}"} for s in ("read", "write"))
    assert upload(client, CHAT).status_code == 401
    assert upload(client, CHAT, headers=read).status_code == 403
    file_id = upload(client, CHAT, headers=write).json()["id"]
    job = {"dataset": file_id, "hyperparameters": {"max_steps": 1}}
    assert client.post("/v1/tune/jobs", json=job, headers=read).status_code == 403
    job_id = client.post("/v1/tune/jobs", json=job, headers=write).json()["id"]
    for path in ("/v1/files", "/v1/tune/jobs", f"/v1/tune/jobs/{job_id}"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers=read).status_code == 200
    cancel = f"/v1/tune/jobs/{job_id}/cancel"
    assert client.post(cancel, headers=read).status_code == 403
    assert client.post(cancel, headers=write).status_code in (202, 409)


def test_a_job_name_is_bounded_as_the_registry_bounds_it(make_client) -> None:
    """The registry names a version ``<name>-v<N>`` within 64 characters, so a name is at most
    48: one longer is refused at the edge (and by the recipe), not after training."""
    client = make_client()
    file_id = upload(client, CHAT * 8).json()["id"]
    body = {"dataset": file_id, "hyperparameters": {"max_steps": 2}}
    longest, over = "n" * 48, "n" * 49
    r = client.post("/v1/tune/jobs", json={**body, "name": longest})
    assert r.status_code == 202, r.text
    assert poll(client, r.json()["id"], "succeeded")["adapter"] == f"{longest}-v1"
    r = client.post("/v1/tune/jobs", json={**body, "name": over})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", r.text
    assert ["body", "name"] in [d["loc"][:2] for d in r.json()["error"]["details"]]
    dataset = {"file_id": file_id}
    assert recipe_from_dict({"name": longest, "datasets": [dataset]}).name == longest
    with pytest.raises(ValueError, match="name: 1-48 letters"):
        recipe_from_dict({"name": over, "datasets": [dataset]})


QA_FILE = b'{"question": "what installs packages", "answer": "apt"}\n'


def test_what_could_only_fail_after_202_is_refused_at_submit(make_client, tiny_lora: Path) -> None:
    """A parent the registry does not hold (or of another component or method), an uploaded
    file whose recorded format the job cannot read, and an empty ``target_modules`` are 422s
    naming the field, not a job that fails while validating or training."""
    from tuner.registry import Registry

    client = make_client()
    adapters = Registry(Path(client.app.state.ragtune.settings.data_dir) / "adapters")  # type: ignore[attr-defined]

    def weights(folder: Path) -> None:
        shutil.copytree(tiny_lora, folder, dirs_exist_ok=True)

    adapters.save(weights, name="kept")
    chat = upload(client, CHAT * 8).json()["id"]
    qa = upload(client, QA_FILE * 8).json()["id"]
    hp = {"max_steps": 2}
    for body, words in (
        ({"dataset": chat, "parent": "nope"}, "parent: no adapter 'nope'"),
        ({"dataset": chat, "parent": "kept-v1", "method": "dora"}, "parent: kept-v1 was trained"),
        (
            {"dataset": chat, "component": "retriever", "method": "full", "parent": "kept-v1"},
            "parent: kept-v1 is a generator adapter",
        ),
        ({"dataset": qa}, f"dataset: uploaded file {qa} holds qa records"),
        ({"dataset": {"file_id": qa, "template": "summarization"}}, "dataset: uploaded file"),
        ({"dataset": {"file_id": chat, "format": "alpaca"}}, "holds chat records"),
        ({"dataset": chat, "hyperparameters": {"target_modules": []}}, "target_modules"),
    ):
        r = client.post("/v1/tune/jobs", json={"hyperparameters": hp, **body})
        assert r.status_code == 422, (body, r.text)
        assert words in json.dumps(r.json()), (body, r.json())
    assert client.get("/v1/tune/jobs").json() == {"jobs": []}
    for good in (
        {"dataset": chat, "parent": "kept-v1"},
        {"dataset": {"file_id": qa, "template": "qa"}},
        {"dataset": {"file_id": chat, "format": "chat"}},
        {"dataset": chat, "hyperparameters": {"target_modules": ["q_proj"]}},
    ):
        r = client.post("/v1/tune/jobs", json={"hyperparameters": hp, **good})
        assert r.status_code == 202, (good, r.text)
    with pytest.raises(ValueError, match="hyperparameters.target_modules"):
        recipe_from_dict(
            {
                "name": "x",
                "datasets": [{"file_id": chat}],
                "hyperparameters": {"target_modules": []},
            }
        )

"""/v1/eval/runs through the real app: the live index searched here, a stand-in harness as the
worker (tests/service/fake_eval_worker.py), reports served from the run folder."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.evalruns import make_eval_runner
from service.settings import ApiKey, Settings
from tests.helpers import app_clients, poll_state

ROOT = Path(__file__).resolve().parents[2]
DOCS = [
    {"id": "apt", "text": "apt installs packages from the debian archive"},
    {"id": "grub", "text": "grub shows the boot menu before the kernel starts"},
    {"id": "bash", "text": "bash is the login shell of a new user"},
]
QA = [
    {"question": "what installs packages", "answer": "apt"},
    {"id": "q2", "question": "what shows the boot menu", "answers": ["grub"]},
    {"question": "which shell is the login shell", "answer": "bash", "doc_ids": ["bash"]},
]
SQUAD = [
    {"context": "dpkg unpacks a package file", "question": "what unpacks", "answers": ["dpkg"]},
    {"context": "the mirror holds the archive", "question": "what holds it", "answers": ["mirror"]},
]
KEYS = {s: f"key-for-{s}-0123456789" for s in ("read", "write")}


def jsonl(rows: list[dict], blank: bool = False) -> bytes:
    lines = [json.dumps(r) for r in rows]
    if blank:
        lines.insert(1, "")
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
def make_client(tiny_llama: Path, tmp_path: Path):
    with app_clients(tiny_llama, tmp_path) as make_app_client:

        def make(step_s: float = 0.02, **settings: object) -> TestClient:
            def setup(state) -> None:  # noqa: ANN001 - service.app.AppState
                state.evals = make_eval_runner(
                    state,
                    command=[sys.executable, "-m", "tests.service.fake_eval_worker"],
                    env={"PYTHONPATH": str(ROOT), "FAKE_STEP_S": str(step_s)},
                    poll_s=0.05,
                )

            return make_app_client(Settings(generator=str(tiny_llama), **settings), setup)  # type: ignore[arg-type]

        yield make


def upload(client: TestClient, data: bytes, headers: dict | None = None) -> dict:
    files = {"file": ("eval.jsonl", data, "application/jsonl")}
    r = client.post("/v1/files", files=files, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def poll(client: TestClient, run_id: str, state: str, timeout: float = 10.0) -> dict:
    return poll_state(client, f"/v1/eval/runs/{run_id}", state, timeout)


def run_dir(client: TestClient, run_id: str) -> Path:
    return client.app.state.ragtune.evals.job_dir(run_id)  # type: ignore[attr-defined, no-any-return]


def test_a_live_run_searches_here_and_serves_its_report(make_client) -> None:
    client = make_client()
    assert client.post("/v1/documents", json={"documents": DOCS}).status_code == 201
    meta = upload(client, jsonl(QA, blank=True))
    assert meta["format"] == "qa"
    body = {"dataset": {"file_id": meta["id"]}, "k": 2, "depth": 5, "resamples": 200}
    r = client.post("/v1/eval/runs", json=body)
    assert r.status_code == 202, r.text
    assert set(r.json()) == {"id", "state"} and r.json()["state"] in ("validating", "queued")
    run_id = r.json()["id"]
    run = poll(client, run_id, "succeeded")
    assert run["progress"] == {"done": 3, "total": 3} and run["error"] is None
    assert run["modes"] == ["base", "rag"] and run["file_id"] == meta["id"]  # no adapter: two
    assert run["options"]["k"] == 2 and run["created"] <= run["started"] <= run["finished"]

    folder = run_dir(client, run_id)
    lines = [json.loads(x) for x in (folder / "retrieved.jsonl").read_text().splitlines()]
    assert [(x["row"], x["question"]) for x in lines] == [
        (i, q["question"]) for i, q in enumerate(QA)
    ]
    assert all(isinstance(x["seconds"], float) and x["seconds"] >= 0 for x in lines)
    assert [x["hits"][0]["doc_id"] for x in lines] == ["apt", "grub", "bash"]
    hit = lines[0]["hits"][0]
    assert set(hit) == {
        "doc_id",
        "chunk_id",
        "start",
        "end",
        "score",
        "text",
        "title",
        "section",
        "metadata",
    }
    assert hit["text"] == DOCS[0]["text"] and 1 <= len(lines[0]["hits"]) <= 5
    assert (folder / "dataset.jsonl").read_bytes() == jsonl(QA, blank=True)
    options = json.loads((folder / "recipe.json").read_text())["options"]
    assert options["live"] and options["retrieved"] == "retrieved.jsonl"
    assert options["dataset"] == "dataset.jsonl"  # relative: never a path from the client

    metrics = run["metrics"]
    assert metrics["questions"] == 3 and metrics["first_hit"] == "apt"
    assert metrics["run"]["data_dir"] == "."  # the stand-in records the data dir; never served
    html = client.get(f"/v1/eval/runs/{run_id}/report")
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert "3 questions" in html.text
    assert "default-src 'none'" in html.headers["content-security-policy"]
    md = client.get(f"/v1/eval/runs/{run_id}/report", params={"format": "md"})
    assert md.headers["content-type"].startswith("text/markdown") and md.text.startswith("# Eval")
    as_json = client.get(f"/v1/eval/runs/{run_id}/report?format=json")
    assert as_json.headers["content-type"] == "application/json" and as_json.json() == metrics
    assert client.get(f"/v1/eval/runs/{run_id}/report?format=pdf").status_code == 422
    listed = client.get("/v1/eval/runs").json()["runs"]
    assert [x["id"] for x in listed] == [run_id] and "metrics" not in listed[0]
    assert client.post(f"/v1/eval/runs/{run_id}/cancel").status_code == 409


def test_a_squad_file_is_indexed_by_the_worker_and_limit_bounds_the_search(make_client) -> None:
    client = make_client()
    meta = upload(client, jsonl(SQUAD))
    assert meta["format"] == "squad"
    r = client.post("/v1/eval/runs", json={"dataset": meta["id"], "modes": ["rag"]})
    run = poll(client, r.json()["id"], "succeeded")
    folder = run_dir(client, run["id"])
    assert not (folder / "retrieved.jsonl").exists() and (folder / "dataset.jsonl").is_file()
    assert run["metrics"]["questions"] == 2 and not run["metrics"]["run"]["options"]["live"]

    client.post("/v1/documents", json={"documents": DOCS})
    qa = upload(client, jsonl(QA))["id"]
    r = client.post("/v1/eval/runs", json={"dataset": qa, "modes": ["base"], "limit": 2})
    run = poll(client, r.json()["id"], "succeeded")
    assert len((run_dir(client, run["id"]) / "retrieved.jsonl").read_text().splitlines()) == 2


def test_bad_runs_are_422_and_unknown_ids_404(make_client) -> None:
    client = make_client()
    file_id = upload(client, jsonl(QA))["id"]
    edge, run = "invalid_request", "invalid_eval_run"  # the body's schema; the run's checks
    for body, code, words in (
        ({"dataset": "file-0000000000000000"}, run, "no uploaded file"),
        ({"dataset": {"file_id": "../../etc/passwd"}}, edge, "file_id"),
        ({"dataset": file_id, "modes": ["magic"]}, edge, "modes"),
        ({"dataset": file_id, "modes": []}, edge, "modes"),
        ({"dataset": file_id, "modes": ["rag", "rag"]}, run, "each mode once"),
        ({"dataset": file_id, "k": 5, "depth": 4}, run, "depth: must be >= k"),
        ({"dataset": file_id, "k": 0}, edge, "k"),
        ({"dataset": file_id, "k": True}, edge, "k"),  # strict: JSON types as sent
        ({"dataset": file_id, "k": "3"}, edge, "k"),
        ({"dataset": file_id, "probes": "yes"}, edge, "probes"),
        ({"dataset": {"file_id": 7}}, edge, "file_id"),
        ({"dataset": file_id, "limit": 0}, edge, "limit"),
        ({"dataset": file_id, "resamples": 5}, edge, "resamples"),
        ({"dataset": file_id, "resamples": 10**15}, edge, "resamples"),
        ({"dataset": file_id, "depth": 51}, run, "max_k"),
        ({"dataset": file_id, "max_new_tokens": 1000}, run, "max_new_tokens: at most"),
        ({"dataset": file_id, "max_new_tokens": 100_000}, edge, "max_new_tokens"),
        ({"dataset": file_id, "seed": 2**63}, edge, "seed"),
        ({"dataset": file_id, "modes": ["rag", "ft"]}, run, "modes ft: a fine-tuned adapter"),
        ({"dataset": file_id, "ft_adapter": "ghost-v1"}, run, "ft_adapter: no adapter 'ghost-v1'"),
        ({"dataset": file_id, "hybrid_adapter": "../x"}, edge, "hybrid_adapter"),
        ({"dataset": file_id, "modes": ["icl", "icl"]}, run, "each mode once"),
        ({"dataset": file_id, "modes": ["icl"], "shots": 0}, edge, "shots"),
        ({"dataset": file_id, "modes": ["icl"], "shots": 33}, edge, "shots"),
        ({"dataset": file_id, "modes": ["icl"], "shots_from": "dev"}, edge, "shots_from"),
        ({"dataset": file_id, "modes": ["rag-icl"], "shot_choice": "best"}, edge, "shot_choice"),
    ):
        r = client.post("/v1/eval/runs", json=body)
        assert r.status_code == 422 and r.json()["error"]["code"] == code, (body, r.json())
        assert words in json.dumps(r.json()), (body, r.json())
    for extra in ({"dataset": {"path": "/etc/passwd"}}, {"dataset": file_id, "judge": "os:system"}):
        r = client.post("/v1/eval/runs", json=extra)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", extra
    assert client.get("/v1/eval/runs").json() == {"runs": []}
    for method, path in (
        ("get", "/v1/eval/runs/job-x"),
        ("get", "/v1/eval/runs/job-x/report"),
        ("post", "/v1/eval/runs/job-x/cancel"),
    ):
        r = client.request(method, path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "eval_run_not_found"


def test_every_bad_line_of_a_dataset_is_a_422_at_submit(make_client) -> None:
    """Each line without a question, and each line of a stored file that is not a JSON object,
    is listed with the file and its line number (not only the first, and not after a 202)."""
    client = make_client()
    rows = [QA[0], {"question": " ", "answer": "x"}, QA[1], {"question": 5, "answer": "y"}]
    bad = upload(client, jsonl(rows))["id"]
    r = client.post("/v1/eval/runs", json={"dataset": bad})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_eval_run", r.text
    error = r.json()["error"]
    assert error["message"].startswith(f"dataset {bad}: 2 bad lines: line 2: 'question'")
    assert [(d["file"], d["line"]) for d in error["details"]] == [(bad, 2), (bad, 4)]
    assert all("non-empty string" in d["reason"] for d in error["details"])

    stored = client.app.state.ragtune.settings.layout.files / f"{bad}.jsonl"  # type: ignore[attr-defined]
    stored.write_bytes(jsonl([QA[0]]) + b"{not json\n" + jsonl([QA[1]]) + b"[1]\n" * 150)
    error = client.post("/v1/eval/runs", json={"dataset": bad}).json()["error"]
    assert error["message"].startswith(f"dataset {bad}: 151 bad lines: line 2: not JSON")
    assert [d["line"] for d in error["details"]] == [2, *range(4, 103)]  # the first 100
    assert client.get("/v1/eval/runs").json() == {"runs": []}


def test_a_dataset_spoiled_after_submit_fails_the_run_naming_every_line(tmp_path: Path) -> None:
    from service.evalruns import BadDataset, EvalSpec, prepare_run

    files = tmp_path / "files"
    files.mkdir()
    rows = [{"question": "", "answer": "a"}, QA[0], {"answer": "b"}]
    (files / "file-abc.jsonl").write_bytes(jsonl(rows))
    with pytest.raises(BadDataset) as caught:
        prepare_run(EvalSpec("file-abc"), tmp_path / "run", files_dir=files, retriever=None)
    assert caught.value.problems == [
        (1, "'question' must be a non-empty string"),
        (3, "'question' must be a non-empty string"),
    ]
    assert str(caught.value).startswith("dataset file-abc: 2 bad lines: line 1: ")
    assert "line 3: 'question'" in str(caught.value)


def test_a_failing_worker_fails_the_run(make_client) -> None:
    client = make_client()
    good = upload(client, jsonl(QA))["id"]
    run_id = client.post("/v1/eval/runs", json={"dataset": good, "seed": 666}).json()["id"]
    run = poll(client, run_id, "failed")
    assert run["error"] == "dataset.jsonl:1: the fake harness refuses this data"


def test_cancel_a_running_run(make_client) -> None:
    client = make_client(step_s=0.3)
    file_id = upload(client, jsonl(QA * 20))["id"]
    run_id = client.post("/v1/eval/runs", json={"dataset": file_id}).json()["id"]
    poll(client, run_id, "running")
    r = client.get(f"/v1/eval/runs/{run_id}/report?format=md")
    assert r.status_code == 409 and "running" in r.json()["error"]["message"]
    r = client.post(f"/v1/eval/runs/{run_id}/cancel")
    assert r.status_code == 202 and r.json()["cancel_requested"]
    run = poll(client, run_id, "cancelled", timeout=5)
    assert run["progress"]["done"] < 60 and run["metrics"] is None
    r = client.post(f"/v1/eval/runs/{run_id}/cancel")
    assert r.status_code == 409 and r.json()["error"]["code"] == "eval_run_finished"


def test_scopes(make_client) -> None:
    keys = [ApiKey(name=s, key=k, scopes=[s]) for s, k in KEYS.items()]  # type: ignore[arg-type]
    client = make_client(auth_disabled=False, api_keys=keys)
    read, write = ({"Authorization": f"Bearer {KEYS[s]}"} for s in ("read", "write"))
    file_id = upload(client, jsonl(SQUAD), headers=write)["id"]
    body = {"dataset": file_id, "modes": ["base"]}
    assert client.post("/v1/eval/runs", json=body).status_code == 401
    assert client.post("/v1/eval/runs", json=body, headers=read).status_code == 403
    run_id = client.post("/v1/eval/runs", json=body, headers=write).json()["id"]
    for path in ("/v1/eval/runs", f"/v1/eval/runs/{run_id}"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers=read).status_code == 200
    cancel = f"/v1/eval/runs/{run_id}/cancel"
    assert client.post(cancel, headers=read).status_code == 403
    assert client.post(cancel, headers=write).status_code in (202, 409)


def test_the_service_never_imports_eval() -> None:
    """The runner starts ``python -m eval.worker``; no module of ``service`` imports ``eval``."""
    for path in sorted((ROOT / "service").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n == "eval" or n.startswith("eval.") for n in names), (path, names)


def test_in_context_runs_carry_their_demonstration_options(make_client) -> None:
    client = make_client()
    squad = upload(client, jsonl(SQUAD))["id"]
    body = {"dataset": squad, "modes": ["icl", "rag-icl"], "shots": 2, "shot_choice": "random"}
    r = client.post("/v1/eval/runs", json=body)
    assert r.status_code == 202, r.text
    run = poll(client, r.json()["id"], "succeeded")
    assert run["modes"] == ["icl", "rag-icl"]
    options = run["metrics"]["run"]["options"]  # what the worker was given
    assert (options["shots"], options["shots_from"], options["shot_choice"]) == (
        2,
        "auto",
        "random",
    )


def test_the_run_modes_and_shot_options_are_the_harness_own() -> None:
    """The service names the harness's modes and shot options without importing it."""
    from eval import config
    from service import evalruns

    assert evalruns.RUN_MODES == config.MODES
    assert (evalruns.SHOTS_FROM, evalruns.SHOT_CHOICES) == (config.SHOTS_FROM, config.SHOT_CHOICES)
    assert config.BOUNDS["shots"][1] == evalruns.SHOTS_MAX


@pytest.mark.slow
def test_an_in_context_run_through_the_real_harness(
    tiny_llama: Path, tiny_st: Path, tmp_path: Path
) -> None:
    with app_clients(tiny_llama, tmp_path) as make:
        client = make(Settings(generator=str(tiny_llama), embedder=str(tiny_st), threads=1))  # type: ignore[arg-type]
        train = [
            {
                "context": "grub shows the boot menu",
                "question": "what shows the menu",
                "answers": ["grub"],
                "split": "train",
            },
            {
                "context": "bash is a shell",
                "question": "which shell",
                "answers": ["bash"],
                "split": "train",
            },
        ]
        squad = upload(client, jsonl(SQUAD + train))["id"]
        body = {
            "dataset": squad,
            "modes": ["base", "icl"],
            "shots": 1,
            "shots_from": "train",
            "max_new_tokens": 4,
            "probes": False,
            "resamples": 100,
        }
        r = client.post("/v1/eval/runs", json=body)
        assert r.status_code == 202, r.text
        run = poll(client, r.json()["id"], "succeeded", timeout=240)
        metrics = run["metrics"]
        assert set(metrics["metrics"]) == {"base", "icl"}
        assert metrics["run"]["shots"]["from"] == "train"
        rows = [
            json.loads(x)
            for x in (run_dir(client, run["id"]) / "report" / "results.jsonl")
            .read_text()
            .splitlines()
        ]
        icl = [r for r in rows if r["mode"] == "icl"]
        assert len(icl) == 2 and all(len(r["shots"]) == 1 for r in icl)
        asked = {q["question"] for q in SQUAD}
        assert not any(shot in asked for r in icl for shot in r["shots"])  # never an asked one

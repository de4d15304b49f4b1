"""What a read-scope client sees of eval runs and tune jobs holds no server path and no internal
name: a run's metrics and reports name its dataset by its place in the run folder and models by
their id, runs recorded before that rule are served so too, and /openapi.json names its models
and describes its fields for a client."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from service.evalruns import make_eval_runner
from service.settings import Settings
from tests.helpers import app_clients, poll_state

ROOT = Path(__file__).resolve().parents[2]
DOCS = [
    {"id": "apt", "text": "apt installs packages from the debian archive"},
    {"id": "grub", "text": "grub shows the boot menu before the kernel starts"},
]
QA: list[dict] = [
    {"question": "what installs packages", "answer": "apt", "doc_ids": ["apt"]},
    {"question": "what shows the boot menu", "answer": "grub"},
]


def _upload(client, rows: list[dict]) -> str:  # noqa: ANN001 - TestClient
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    r = client.post("/v1/files", files={"file": ("qa.jsonl", body, "application/jsonl")})
    assert r.status_code == 201, r.text
    return r.json()["id"]  # type: ignore[no-any-return]


def _served(client, run_id: str) -> dict[str, str]:  # noqa: ANN001 - TestClient
    """Everything a reader gets of a run: its record and its report in every format."""
    out = {"run": client.get(f"/v1/eval/runs/{run_id}").text}
    for fmt in ("json", "md", "html"):
        r = client.get(f"/v1/eval/runs/{run_id}/report", params={"format": fmt})
        assert r.status_code == 200, (fmt, r.text)
        out[fmt] = r.text
    return out


def _assert_no_server_path(served: dict[str, str], *folders: Path) -> None:
    for what, text in served.items():
        for folder in folders:
            assert str(folder) not in text, (what, str(folder), text[:2000])


@pytest.mark.slow
def test_a_real_runs_metrics_and_reports_name_no_server_path(
    tiny_llama: Path, tmp_path: Path
) -> None:
    """The real eval worker and harness, as ``ragtune serve`` runs them."""
    with app_clients(tiny_llama, tmp_path) as make:

        def setup(state) -> None:  # noqa: ANN001 - service.app.AppState
            state.evals = make_eval_runner(state, poll_s=0.05)

        client = make(Settings(generator=str(tiny_llama)), setup)
        assert client.post("/v1/documents", json={"documents": DOCS}).status_code == 201
        body = {"dataset": _upload(client, QA), "modes": ["base", "rag"], "probes": False}
        r = client.post("/v1/eval/runs", json={**body, "max_new_tokens": 2, "resamples": 100})
        assert r.status_code == 202, r.text
        run = poll_state(client, f"/v1/eval/runs/{r.json()['id']}", "succeeded", 240)
        info = run["metrics"]["run"]
        assert info["dataset"] == "dataset.jsonl"
        assert info["options"]["dataset"] == "dataset.jsonl"
        assert info["options"]["retrieved"] == "retrieved.jsonl"
        assert info["generator"] == tiny_llama.name
        served = _served(client, run["id"])
        assert (
            "dataset: dataset.jsonl" in served["md"] and "dataset: dataset.jsonl" in served["html"]
        )
        data_dir = client.app.state.ragtune.settings.data_dir  # type: ignore[attr-defined]
        _assert_no_server_path(served, Path(data_dir), tiny_llama, tmp_path)
        report = client.app.state.ragtune.evals.job_dir(run["id"]) / "report"  # type: ignore[attr-defined]
        written = {p.name: p.read_text() for p in report.iterdir() if p.suffix != ".jsonl"}
        _assert_no_server_path(written, Path(data_dir), tiny_llama)  # recorded so, not only served


@pytest.fixture
def fake_client(tiny_llama: Path, tmp_path: Path):
    """The real app whose eval worker is the stand-in harness (tests/service/fake_eval_worker)."""
    with app_clients(tiny_llama, tmp_path) as make:

        def setup(state) -> None:  # noqa: ANN001 - service.app.AppState
            state.evals = make_eval_runner(
                state,
                command=[sys.executable, "-m", "tests.service.fake_eval_worker"],
                env={"PYTHONPATH": str(ROOT)},
                poll_s=0.05,
            )

        yield make(Settings(generator=str(tiny_llama)), setup)


def test_a_run_recorded_with_server_paths_is_served_without_them(
    fake_client, tiny_llama: Path
) -> None:
    """Runs written before the harness recorded relative names: paths under the run folder are
    served relative to it, other data-dir paths relative to the data dir, a model folder by its
    last part; the files on disk are left as they were."""
    client = fake_client
    assert client.post("/v1/documents", json={"documents": DOCS}).status_code == 201
    r = client.post("/v1/eval/runs", json={"dataset": _upload(client, QA), "modes": ["base"]})
    run_id = poll_state(client, f"/v1/eval/runs/{r.json()['id']}", "succeeded", 10)["id"]
    state = client.app.state.ragtune  # type: ignore[attr-defined]
    folder, data_dir = state.evals.job_dir(run_id), Path(state.settings.data_dir)
    old = {
        "run": {
            "dataset": str(folder / "dataset.jsonl"),
            "generator": str(tiny_llama),
            "options": {"dataset": str(folder / "dataset.jsonl"), "retrieved": None},
            "index": str(data_dir / "index"),
        }
    }
    report = folder / "report"
    (report / "metrics.json").write_text(json.dumps(old))
    (report / "report.md").write_text(f"# Evaluation\n\n- dataset: {folder}/dataset.jsonl\n")
    (report / "report.html").write_text(f"<li>dataset: {folder}/dataset.jsonl</li>")
    served = _served(client, run_id)
    _assert_no_server_path(served, data_dir, tiny_llama)
    shown = json.loads(served["run"])["metrics"]["run"]
    assert shown == {
        "dataset": "dataset.jsonl",
        "generator": tiny_llama.name,
        "options": {"dataset": "dataset.jsonl", "retrieved": None},
        "index": "index",
    }
    assert json.loads(served["json"]) == json.loads(served["run"])["metrics"]
    assert "- dataset: dataset.jsonl" in served["md"]
    assert "<li>dataset: dataset.jsonl</li>" in served["html"]
    assert str(folder) in (report / "report.md").read_text()  # served scrubbed, not rewritten


def test_openapi_names_its_models_for_a_client(fake_client) -> None:
    spec = fake_client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert {"EvalProgress", "TuneProgress"} <= set(schemas)
    assert not [name for name in schemas if "__" in name or name == "Progress"]
    internal = re.findall(r"\b(?:tuner|service|eval)\.[a-z_]+", json.dumps(spec))
    assert internal == [], internal
    dataset = schemas["DatasetBody"]["properties"]
    assert "live index" in json.dumps(dataset["synthetic"])

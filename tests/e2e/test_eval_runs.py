"""An evaluation run over HTTP end to end: a real server on loopback, a question file uploaded,
the live index searched by the server, the real eval worker process answering with the tiny
Llama and a LoRA from the registry, and the report served back."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.settings import Settings
from tests.helpers import serve_on_loopback, tiny_loader

pytestmark = pytest.mark.slow

DOCS = [
    {"id": "apt", "text": "apt installs packages from the debian archive"},
    {"id": "grub", "text": "grub shows the boot menu before the kernel starts"},
    {"id": "bash", "text": "bash is the login shell of a new user"},
]
QA = [
    {"id": "q1", "question": "what installs packages", "answer": "apt", "doc_ids": ["apt"]},
    {"id": "q2", "question": "what shows the boot menu", "answer": "grub", "doc_ids": ["grub"]},
    {"id": "q3", "question": "which shell is the login shell", "answer": "bash"},
]


def test_eval_run_over_http_with_the_real_worker(
    tiny_llama: Path, tiny_lora: Path, tmp_path: Path
) -> None:
    from tuner.registry import Registry

    data = tmp_path / "data"
    Registry(data / "adapters").save(
        lambda folder: shutil.copytree(tiny_lora, folder, dirs_exist_ok=True),
        name="gamma",
        base_model=str(tiny_llama),
    )
    settings = Settings(data_dir=data, generator=str(tiny_llama))
    app = create_app(settings, loader=tiny_loader(tiny_llama, tmp_path, adapters=data / "adapters"))
    base, server = serve_on_loopback(app)
    try:
        with httpx.Client(base_url=base, timeout=30) as http:
            for doc in DOCS:
                assert http.post("/v1/documents", json=doc).status_code in (200, 201)
            body = "".join(json.dumps(r) + "\n" for r in QA).encode()
            up = http.post("/v1/files", files={"file": ("qa.jsonl", body, "application/jsonl")})
            assert up.status_code in (200, 201), up.text
            run = http.post(
                "/v1/eval/runs",
                json={
                    "dataset": up.json()["id"],
                    "modes": ["base", "rag", "hybrid"],
                    "hybrid_adapter": "gamma-v1",
                    "max_new_tokens": 4,
                    "resamples": 200,
                },
            )
            assert run.status_code == 202, run.text
            run_id = run.json()["id"]
            assert http.get(f"/v1/eval/runs/{run_id}/report").status_code in (409, 200)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                got = http.get(f"/v1/eval/runs/{run_id}").json()
                if got["state"] in ("succeeded", "failed", "cancelled"):
                    break
                time.sleep(0.5)
            assert got["state"] == "succeeded", got.get("error")
            metrics = got["metrics"]
            assert metrics["run"]["live"] is True and metrics["run"]["questions"] == 3
            assert set(metrics["metrics"]) == {"base", "rag", "hybrid"}
            assert metrics["retrieval"]["n"] == 2  # two questions carry doc_ids
            assert got["progress"] == {"done": 9, "total": 9}
            page = http.get(f"/v1/eval/runs/{run_id}/report")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert "data:image/png;base64," in page.text
            md = http.get(f"/v1/eval/runs/{run_id}/report", params={"format": "md"})
            assert md.status_code == 200 and "| hybrid |" in md.text
            assert metrics["run"]["dataset"] == "dataset.jsonl"  # never a server path
            for served in (json.dumps(got), page.text, md.text):
                assert str(data) not in served and str(tiny_llama) not in served
    finally:
        server.should_exit = True

"""`ragtune serve` as a user runs it: a real process on loopback, models loaded, then ready."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers import wait_ready


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ragtune() -> str:
    return str(Path(sys.executable).parent / "ragtune")


def _ask(base: str) -> dict:
    body = {
        "question": "How do I install a package on Debian?",
        "mode": "rag",
        "k": 3,
        "max_new_tokens": 8,
    }
    return httpx.post(f"{base}/v1/query", timeout=60, json=body).json()  # type: ignore[no-any-return]


@pytest.mark.slow
def test_serve_becomes_ready_on_loopback(tiny_llama: Path, tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "RAGTUNE_GENERATOR": str(tiny_llama),
        "RAGTUNE_THREADS": "1",
        "RAGTUNE_DATA_DIR": str(tmp_path / "data"),
    }
    proc = subprocess.Popen(
        [_ragtune(), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_ready(base, proc, 120), "server never became ready"
        ready = httpx.get(f"{base}/readyz", timeout=2)
        assert ready.status_code == 200, ready.text
        models = ready.json()["models"]
        assert models["embedder"]["name"] == "all-MiniLM-L6-v2"
        assert models["generator"] == {
            "name": tiny_llama.name,
            "hub_id": None,
            "source": "path",
            "precision": "fp32",
        }
        assert str(tmp_path) not in ready.text and str(tiny_llama) not in ready.text  # no folders
        assert httpx.get(f"{base}/healthz", timeout=2).json() == {"status": "ok"}
        # the README's quickstart: add a document, ask, delete it
        doc = {
            "id": "apt-basics",
            "text": "To install a package on Debian, run apt install NAME as root.",
            "metadata": {"source": "notes"},
        }
        assert httpx.post(f"{base}/v1/documents", json=doc, timeout=30).status_code == 201
        answer = _ask(base)
        assert answer["citations"][0]["doc_id"] == "apt-basics"
        page = {"Origin": "http://evil.example"}  # a web page the user has open
        upload = [("files", ("x.jsonl", b'{"id": "apt-basics", "text": "pwned"}', "text/plain"))]
        refused = httpx.post(f"{base}/v1/documents/upload", files=upload, headers=page, timeout=30)
        assert refused.status_code == 403
        rebound = httpx.get(f"{base}/v1/documents", headers={"Host": "rebind.attacker.example"})
        assert rebound.status_code == 403
        stored = httpx.get(f"{base}/v1/documents/apt-basics", timeout=30).json()
        assert stored["text"] == doc["text"]
        assert httpx.delete(f"{base}/v1/documents/apt-basics", timeout=30).status_code == 200
        again = _ask(base)
        assert all(c["doc_id"] != "apt-basics" for c in again["citations"])
        after = httpx.post(
            f"{base}/v1/search", timeout=30, json={"query": "install a package", "mode": "hybrid"}
        ).json()
        assert all(r["doc_id"] != "apt-basics" for r in after["results"])
    finally:
        proc.terminate()
        proc.wait(30)


def test_serve_exits_non_zero_when_a_model_is_missing(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "RAGTUNE_EMBEDDER": str(tmp_path / "no-such-model"),
        "RAGTUNE_DATA_DIR": str(tmp_path / "data"),
    }
    proc = subprocess.run(
        [_ragtune(), "serve", "--port", str(_free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "No source could provide the embedder" in proc.stdout + proc.stderr

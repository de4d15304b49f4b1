"""``ragtune eval`` from the command line: one-line errors, and a --live run against the index
under the data dir (a real SQLite + FAISS index built with the tiny embedder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from eval.cli import main


def _env(tiny_llama: Path, tiny_st: Path) -> dict[str, str]:
    return {"RAGTUNE_GENERATOR": str(tiny_llama), "RAGTUNE_EMBEDDER": str(tiny_st)}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--modes", "rag,chat"], "modes: choose from base, icl, rag, rag-icl, ft, hybrid"),
        (["--k", "30"], "depth: must be >= k"),
        (["--modes", "ft"], "needs a fine-tuned adapter"),
        (["--fix", "--fix-set", "max_steps=3"], "expected generator:KEY=VALUE"),
        (["--fix", "--fix-set", "generator:hyperparameters.max_steps=-1"], "raft-hybrid.yaml"),
        (["--fix", "--fix-set", "retriever:method=ia3"], "retriever-pairs.yaml: method"),
        (["--fix-set", "generator:hyperparameters.max_steps=9"], "--fix-set needs --fix"),
    ],
)
def test_bad_requests_exit_with_one_line(
    args: list[str], message: str, squad_file: Path, tiny_llama: Path, tiny_st: Path
) -> None:
    result = CliRunner().invoke(
        main, ["eval", "--dataset", str(squad_file), *args], env=_env(tiny_llama, tiny_st)
    )
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: ") and message in last


def test_plain_questions_need_live(tmp_path: Path, tiny_llama: Path, tiny_st: Path) -> None:
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "what installs packages?", "answer": "apt"}) + "\n")
    result = CliRunner().invoke(main, ["eval", "--dataset", str(qa)], env=_env(tiny_llama, tiny_st))
    assert result.exit_code == 1 and "add --live" in result.output


@pytest.mark.slow
def test_live_run_asks_the_index_under_the_data_dir(
    tmp_path: Path, tiny_llama: Path, tiny_st: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from retriever.embedder import load_embedder
    from retriever.index import DocumentIn, Retriever
    from service.settings import Settings

    for k, v in _env(tiny_llama, tiny_st).items():
        monkeypatch.setenv(k, v)
    settings = Settings()
    index = Retriever(settings.index_dir, load_embedder(str(tiny_st)))
    index.upsert_many(
        [
            DocumentIn("apt installs packages from the archive", "apt-doc"),
            DocumentIn("grub shows the boot menu", "grub-doc"),
        ]
    )
    index.close()
    qa = tmp_path / "qa.jsonl"
    qa.write_text(
        json.dumps(
            {
                "id": "a",
                "question": "what installs packages",
                "answer": "apt",
                "doc_ids": ["apt-doc"],
            }
        )
        + "\n"
        + json.dumps({"id": "b", "question": "what shows the boot menu", "answer": "grub"})
        + "\n"
    )
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main,
        [
            "eval",
            "--dataset",
            str(qa),
            "--live",
            "--modes",
            "base,rag",
            "--out",
            str(out),
            "--resamples",
            "200",
            "--max-new-tokens",
            "4",
            "--no-probes",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "report: " in result.output and "rag" in result.output
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    rag = {r["query_id"]: r for r in rows if r["mode"] == "rag"}
    assert set(rag["a"]["retrieved"]) == {"apt-doc", "grub-doc"}
    assert rag["a"]["gold_docs"] == ["apt-doc"] and rag["b"]["gold_docs"] is None
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["live"] is True and metrics["retrieval"]["n"] == 1


def test_fix_overrides_are_grouped_by_component() -> None:
    from eval.cli import fix_overrides

    got = fix_overrides(
        (
            "generator:hyperparameters.max_steps=120",
            "retriever:hyperparameters.epochs=2",
            "generator:datasets=[{synthetic: {kind: raft, generator: model}}]",
        )
    )
    assert got == {
        "generator": [
            "hyperparameters.max_steps=120",
            "datasets=[{synthetic: {kind: raft, generator: model}}]",
        ],
        "retriever": ["hyperparameters.epochs=2"],
    }

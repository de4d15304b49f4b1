"""ragtune tune with a retriever recipe, then reindex --rollback and --adapter, on a real index
and a tiny real sentence-transformers embedder under the data dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from retriever.index import stored_identity
from service.cli import main
from service.settings import get_settings
from tests.helpers import tiny_st_model
from tests.tuner.test_retriever_tuning import DOCS


@pytest.mark.slow
def test_tune_retriever_reembeds_then_rollback_and_adapter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tmp_path / "st"
    tiny_st_model(tmp_path / "bert").save(str(base))
    monkeypatch.setenv("RAGTUNE_EMBEDDER", str(base))
    get_settings.cache_clear()
    docs = tmp_path / "docs.jsonl"
    docs.write_text("\n".join(json.dumps({"id": k, "text": v}) for k, v in DOCS.items()) + "\n")
    assert CliRunner().invoke(main, ["ingest", str(docs)]).exit_code == 0
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: emb\ncomponent: retriever\nmethod: full\n"
        "datasets:\n  - synthetic: {kind: pairs, max_examples: 50}\n"
        "hyperparameters: {max_steps: 2, batch_size: 4}\nretriever: {window: [0, 10]}\n"
    )
    out = CliRunner().invoke(main, ["tune", "--recipe", str(recipe)])
    assert out.exit_code == 0, out.output
    assert "embedder emb-v1 (full) saved" in out.stdout
    assert "index re-embedded with emb-v1: 12 chunks switched" in out.stdout
    index_dir = tmp_path / "data" / "index"
    assert stored_identity(index_dir)["adapter"] == "emb-v1"
    assert CliRunner().invoke(main, ["search", "apt", "--mode", "dense"]).exit_code == 0

    back = CliRunner().invoke(main, ["reindex", "--rollback"])
    assert back.exit_code == 0 and "switched 12 chunks from" in back.stdout, back.output
    assert stored_identity(index_dir)["adapter"] is None
    again = CliRunner().invoke(main, ["reindex", "--adapter", "emb-v1"])
    assert "to " in again.stdout and "(fine-tuned: emb-v1)" in again.stdout, again.output
    listed = CliRunner().invoke(main, ["adapters", "list"])
    assert "emb-v1" in listed.stdout and "retriever" in listed.stdout, listed.output
    assert "(the index's embedder)" in listed.stdout
    for args, words in (
        (["adapters", "delete", "emb-v1"], "is the index's embedder"),
        (["reindex", "--adapter", "nope-v1"], "not in the registry"),
        (["reindex", "--adapter", "emb-v1", "--rollback"], "at most one"),
        (["tune", "--recipe", str(recipe), "--set", "method=dora"], "for the retriever"),
    ):
        bad = CliRunner().invoke(main, args)
        assert bad.exit_code == 1 and words in bad.output, (args, bad.output)

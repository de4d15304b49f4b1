"""A failed re-embedding reports one line a client may read: no traceback, no server path."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from service import reindexing
from service.reindexing import Reindexer
from service.settings import Settings


def test_a_failed_reindex_reports_one_line_without_the_servers_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "srv" / "ragtune"
    weights = data_dir / "models" / "all-MiniLM-L6-v2" / "config.json"

    def broken(identity: dict, settings: Settings) -> None:
        raise OSError(f"cannot read {weights}:\nsecond line from {Path('/opt/secret/x.py')}")

    monkeypatch.setattr(reindexing, "embedder_for", broken)
    index = SimpleNamespace(chunk_count=3, reindex=None)
    state = SimpleNamespace(settings=Settings(data_dir=data_dir), retriever=index)
    reindexer = Reindexer(state)
    reindexer.start({"embedder": "all-MiniLM-L6-v2"})
    status = reindexer.join(timeout=10)
    assert status.state == "failed"
    error = str(status.error)
    assert error.startswith("OSError: cannot read models/all-MiniLM-L6-v2/config.json")
    assert "\n" not in error and str(tmp_path) not in error and "/opt/secret" not in error

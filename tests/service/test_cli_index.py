"""ragtune ingest, search and reindex against a real index under the data dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import service.loading
from service.cli import main
from tests.fakes import FakeEmbedder


@pytest.fixture(autouse=True)
def fake_embedders(monkeypatch: pytest.MonkeyPatch) -> None:
    """Embedders by name, without model weights: 'fake-a' (the setting) and 'fake-b'."""

    def load(name: str, **_: object) -> FakeEmbedder:
        return FakeEmbedder(dim=128 if name.endswith("a") else 96, name=name)

    monkeypatch.setenv("RAGTUNE_EMBEDDER", "fake-a")
    monkeypatch.setattr(service.loading, "load_embedder", load)
    monkeypatch.setattr("retriever.embedder.load_embedder", load)


def _docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    (folder / "zh").mkdir(parents=True)
    (folder / "apt.md").write_text("# APT\n\nUse apt install to add packages on Debian.")
    (folder / "zh" / "boot.txt").write_text("系统启动时内核会加载初始内存盘。")
    (folder / "bad.jsonl").write_text('{"id": "j1", "text": "jsonl doc about networking"}\n{oops\n')
    return folder


def test_ingest_then_reingest_reports_statuses(tmp_path: Path) -> None:
    folder = _docs(tmp_path)
    first = CliRunner().invoke(main, ["ingest", str(folder)])
    assert first.exit_code == 0, first.output
    assert "added=3 updated=0 unchanged=0 failed=1 files=3" in first.stdout
    assert "bad.jsonl:2" in first.stderr
    (folder / "apt.md").write_text("# APT\n\nUse apt-get install too.")
    second = CliRunner().invoke(main, ["ingest", str(folder)])
    assert "added=0 updated=1 unchanged=2 failed=1" in second.stdout


def test_search_prints_ranked_passages(tmp_path: Path) -> None:
    CliRunner().invoke(main, ["ingest", str(_docs(tmp_path))])
    out = CliRunner().invoke(main, ["search", "内存盘", "-k", "2", "--mode", "sparse"])
    assert out.exit_code == 0 and out.stdout.splitlines()[0].split()[2].startswith("zh/boot.txt")
    js = CliRunner().invoke(main, ["search", "apt install", "--mode", "sparse", "--json"])
    assert json.loads(js.stdout)[0]["doc_id"] == "apt.md"
    bad = CliRunner().invoke(main, ["search", "x", "-k", "0"])
    assert bad.exit_code == 1 and "-k must be" in bad.output


def test_reindex_and_rollback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    CliRunner().invoke(main, ["ingest", str(_docs(tmp_path))])
    monkeypatch.setenv("RAGTUNE_EMBEDDER", "fake-b")
    refused = CliRunner().invoke(main, ["search", "apt"])
    assert refused.exit_code == 1 and "reindex" in refused.output
    done = CliRunner().invoke(main, ["reindex"])
    assert done.exit_code == 0 and "switched 3 chunks from fake-a to fake-b" in done.stdout
    assert CliRunner().invoke(main, ["search", "apt", "--mode", "dense"]).exit_code == 0
    back = CliRunner().invoke(main, ["reindex", "--rollback"])
    assert "to fake-a" in back.stdout
    monkeypatch.setenv("RAGTUNE_EMBEDDER", "fake-a")
    assert CliRunner().invoke(main, ["search", "apt"]).exit_code == 0


def test_reindex_without_an_index_says_so() -> None:
    out = CliRunner().invoke(main, ["reindex"])
    assert out.exit_code == 1 and "ingest documents first" in out.output


def test_ask_in_process_cites_the_ingested_passage(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAGTUNE_GENERATOR", str(tiny_llama))
    CliRunner().invoke(main, ["ingest", str(_docs(tmp_path))])
    out = CliRunner().invoke(
        main, ["ask", "apt install packages", "-k", "1", "--max-new-tokens", "3"]
    )
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and lines[1].strip().startswith("[1] apt.md [")


def test_ingest_adds_the_good_documents_of_a_batch_with_a_bad_one(tmp_path: Path) -> None:
    f = tmp_path / "mixed.jsonl"
    f.write_text(
        '{"id": "a", "text": "alpha"}\n{"id": "b", "text": "   "}\n{"id": "c", "text": "gamma"}\n'
    )
    out = CliRunner().invoke(main, ["ingest", str(f)])
    assert "added=2 updated=0 unchanged=0 failed=1" in out.stdout
    assert "(b): document text is empty" in out.stderr


def test_migrate_into_postgres_and_back_keeps_every_document_and_embeds_nothing(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from retriever.index import Retriever
    from retriever.postgres import PgRetriever
    from tests.backends import new_schema

    folder = _docs(tmp_path)
    assert CliRunner().invoke(main, ["ingest", str(folder)]).exit_code == 0
    schema = new_schema()
    out = CliRunner().invoke(main, ["migrate", "--to-database", pg_url, "--schema", schema])
    assert out.exit_code == 0, out.output
    assert (
        "copied 3 documents (3 added" in out.stdout and "0 chunk texts embedded anew" in out.stdout
    )
    again = CliRunner().invoke(main, ["migrate", "--to-database", pg_url, "--schema", schema])
    assert "0 added, 0 updated, 3 unchanged" in again.stdout  # a rerun resumes, writes nothing
    pg = PgRetriever(pg_url, FakeEmbedder(dim=128, name="fake-a"), schema=schema)
    try:
        assert len(pg) == 3 and pg.get("j1").text == "jsonl doc about networking"
        assert pg.search("apt install packages", k=1)[0].doc_id.startswith("apt")
        assert pg.search("内核", k=1, mode="sparse")[0].text.startswith("系统启动")
    finally:
        pg.close()
    # and back: from the database (database.url set) into a new embedded folder
    monkeypatch.setenv("RAGTUNE_DATABASE__URL", pg_url)
    monkeypatch.setenv("RAGTUNE_DATABASE__SCHEMA_NAME", schema)
    from service.settings import get_settings

    get_settings.cache_clear()
    back = CliRunner().invoke(main, ["migrate", "--to-folder", str(tmp_path / "back")])
    assert back.exit_code == 0, back.output
    assert "3 added" in back.stdout and "0 chunk texts embedded anew" in back.stdout
    r = Retriever(tmp_path / "back", FakeEmbedder(dim=128, name="fake-a"))
    try:
        assert len(r) == 3 and r.search("内核", k=1, mode="sparse")[0].text.startswith("系统启动")
    finally:
        r.close()
    both = CliRunner().invoke(main, ["migrate"])
    assert both.exit_code != 0 and "exactly one of" in both.output

"""Settings come from env, an optional YAML file and defaults; secrets never show."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from service.cli import main
from service.settings import Settings, hash_key

KEY = "k-0123456789abcdef-secret"


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAGTUNE_DATA_DIR")
    s = Settings()
    assert s.data_dir == Path.home() / ".local" / "share" / "ragtune"
    assert (s.host, s.port, s.embedder, s.generator) == (
        "127.0.0.1",
        8000,
        "all-MiniLM-L6-v2",
        "SmolLM2-135M-Instruct",
    )
    assert s.model_cache == s.data_dir / "models"


def test_env_and_nested_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RAGTUNE_THREADS", "3")
    monkeypatch.setenv("RAGTUNE_LIMITS__MAX_K", "7")
    monkeypatch.setenv("RAGTUNE_MODELS_DIR", str(tmp_path / "m"))
    s = Settings()
    assert (s.threads, s.limits.max_k, s.model_cache) == (3, 7, tmp_path / "m")


def test_yaml_file_below_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "ragtune.yaml"
    cfg.write_text("port: 9001\nthreads: 1\nlimits:\n  max_new_tokens: 64\n")
    monkeypatch.setenv("RAGTUNE_CONFIG", str(cfg))
    monkeypatch.setenv("RAGTUNE_THREADS", "2")
    s = Settings()
    assert (s.port, s.threads, s.limits.max_new_tokens) == (9001, 2, 64)


@pytest.mark.parametrize(
    "content,field",
    [
        ("bogus: 1\n", "bogus"),
        ("device: tpu\n", "device"),
        ("port: 70000\n", "port"),
        ("threads: 0\n", "threads"),
        ("api_keys:\n  - name: x\n    key: short\n", "16 characters"),
    ],
)
def test_bad_config_is_refused_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: str, field: str
) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(content)
    monkeypatch.setenv("RAGTUNE_CONFIG", str(cfg))
    with pytest.raises(ValidationError, match=field):
        Settings()


def test_missing_config_file_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RAGTUNE_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(ValueError, match="no such file"):
        Settings()


def test_api_keys_are_hashed_on_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "RAGTUNE_API_KEYS", json.dumps([{"name": "ci", "key": KEY, "scopes": ["read", "write"]}])
    )
    s = Settings()
    assert s.api_keys[0].sha256 == hash_key(KEY) and s.api_keys[0].key is None
    assert KEY not in s.model_dump_json() and KEY not in json.dumps(s.masked())


def test_config_command_prints_effective_config_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "RAGTUNE_API_KEYS", json.dumps([{"name": "ops", "key": KEY, "scopes": ["admin"]}])
    )
    monkeypatch.setenv("RAGTUNE_PORT", "8123")
    result = CliRunner().invoke(main, ["config", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["port"] == 8123 and data["api_keys"][0]["name"] == "ops"
    assert KEY not in result.output and hash_key(KEY) not in result.output


def test_config_command_reports_bad_settings_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGTUNE_PORT", "not-a-port")
    result = CliRunner().invoke(main, ["config"])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "invalid configuration" in result.output


def test_a_vector_backend_from_a_module_of_vector_modules(tmp_path: Path) -> None:
    """A user's module registers a LangChain store; the settings name it and the index uses it."""
    from retriever.index import DocumentIn
    from service.loading import open_retriever
    from tests.fakes import FakeEmbedder

    retrieval = {"vector_modules": ["tests.service.memory_vectors"], "vector_index": "memory-lc"}
    settings = Settings(data_dir=tmp_path, retrieval=retrieval)
    index = open_retriever(settings, FakeEmbedder())
    try:
        index.upsert(DocumentIn("apt installs packages from the archive", "apt"))
        assert [h.doc_id for h in index.search("apt installs packages", k=1, mode="dense")] == [
            "apt"
        ]
        from tests.service import memory_vectors

        assert sum(len(s.store) for s in memory_vectors.STORES.values()) == index.chunk_count
    finally:
        index.close()
    with pytest.raises(ValidationError, match="retrieval.vector_index: one of"):
        Settings(retrieval={"vector_index": "qdrant"})
    with pytest.raises(ValidationError, match="retrieval.vector_modules: cannot import"):
        Settings(retrieval={"vector_modules": ["no_such_module_here"], "vector_index": "flat"})

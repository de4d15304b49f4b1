"""Every recipe under configs/ loads; overrides and bad values are handled by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuner.config import Recipe, load_recipe, recipe_from_dict

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_there_are_recipes() -> None:
    assert len(CONFIGS) >= 8


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_recipe_loads(path: Path) -> None:
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe) and recipe.datasets
    for spec in recipe.datasets:
        assert spec.path is None or Path(spec.path).is_file(), spec.path


def test_overrides_reach_nested_keys(tmp_path: Path) -> None:
    path = CONFIGS[0]
    recipe = load_recipe(path, ["hyperparameters.rank=4", "name=other", "method=dora"])
    assert recipe.hyperparameters.rank == 4 and recipe.name == "other" and recipe.method == "dora"
    with pytest.raises(ValueError, match="key.path=value"):
        load_recipe(path, ["rank"])


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"method": "magic"}, "method"),
        ({"hyperparameters": {"learning_rate": 0}}, "learning_rate"),
        ({"hyperparameters": {"batch_size": 0}}, "batch_size"),
        ({"hyperparameters": {"scheduler": "sometimes"}}, "scheduler"),
        ({"hyperparameters": {"val_fraction": 0.6, "test_fraction": 0.5}}, "test_fraction"),
        ({"hyperparameters": {"learning_rte": 1e-3}}, "learning_rte"),
        ({"datasets": [{"path": "a.jsonl", "file_id": "b"}]}, "exactly one"),
        ({"datasets": [{"synthetic": {"kind": "poems"}}]}, "synthetic.kind"),
        ({"name": "../etc"}, "name"),
        ({"parent": "x-v1", "method": "prefix_tuning"}, "parent"),
    ],
)
def test_bad_values_are_refused_by_name(change: dict, named: str) -> None:
    data = {"name": "ok", "datasets": [{"path": "a.jsonl"}], **change}
    with pytest.raises(ValueError, match=named):
        recipe_from_dict(data)

"""The registry's records in a real PostgreSQL: the database, not the copy beside the weights,
is what every replica reads, and a promotion through one instance reaches another's follower
over LISTEN/NOTIFY."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.backends import new_schema
from tests.tuner.test_registry import fake_adapter
from tuner.pg import Database
from tuner.pgregistry import PgRegistry, RegistryFollower
from tuner.registry import RECORD_FILE, Registry, RegistryError


@pytest.fixture
def database(pg_url: str) -> Database:
    return Database(pg_url, new_schema())


def test_the_database_holds_the_records_the_versions_and_the_promotion(
    tmp_path: Path, database: Database
) -> None:
    reg = PgRegistry(tmp_path / "adapters", database)
    first = reg.save(fake_adapter, name="faq").id
    reg.set_eval_gate(first, True, {"f1": 0.3})
    reg.promote(first)
    (reg.root / first / RECORD_FILE).unlink()  # the copy beside the weights is not the record
    other = PgRegistry(reg.root, database)
    record = other.get(first)
    assert record.tracked and record.eval_gate and record.eval_gate["f1"] == 0.3
    assert record.promoted and other.promoted_in_database() == first
    assert not (reg.root / "promoted.json").exists() and not (reg.root / "versions.json").exists()
    assert Registry(reg.root).promoted() is None  # the files' registry knows nothing of it
    other.delete(first, force=True)
    assert reg.save(fake_adapter, name="faq").id == "faq-v2"  # the version is remembered
    assert reg.promoted() is None


def test_a_promotion_reaches_another_replicas_follower_within_two_seconds(
    tmp_path: Path, database: Database
) -> None:
    heard: list[tuple[str | None, float]] = []
    changed = threading.Event()

    def on_promote(adapter_id: str | None) -> None:
        heard.append((adapter_id, time.monotonic()))
        changed.set()

    reg = PgRegistry(tmp_path / "adapters", database)
    a = reg.save(fake_adapter, name="a").id
    b = reg.save(fake_adapter, name="b").id
    follower = RegistryFollower(database, on_promote).start()
    try:
        assert follower.listening and follower.promoted is None
        for target in (a, b, None):
            changed.clear()
            began = time.monotonic()
            if target is None:
                PgRegistry(reg.root, database).demote()
            else:
                PgRegistry(reg.root, database).promote(target)
            assert changed.wait(2.0), f"no announcement of {target}"
            assert heard[-1][0] == target and heard[-1][1] - began < 2.0
            assert follower.promoted == target
        PgRegistry(reg.root, database).promote(b)
        _within_2s = time.monotonic() + 2
        while follower.promoted != b and time.monotonic() < _within_2s:
            time.sleep(0.02)
        follower.promoted = a  # as if b's announcement were not heard yet
        assert reg.promoted() is not None and reg.promoted().id == a  # reads use the cache
        with pytest.raises(RegistryError, match="promoted"):
            reg.delete(b)  # but a change decides on the database: b is promoted
        assert (reg.root / b).is_dir()
    finally:
        follower.close()
    assert [h for h, _ in heard][:3] == [a, b, None]

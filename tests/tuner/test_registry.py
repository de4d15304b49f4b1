"""The adapter registry: versions, atomic saves, promotion, staleness, lineage, loadability;
with its records beside the weights, and in a real PostgreSQL (``tuner.pgregistry``)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tuner.record import Record, describe
from tuner.registry import RECORD_FILE, RecordNotFound, Registry, RegistryError


def fake_adapter(folder: Path) -> None:
    """What PEFT's save_pretrained writes, in miniature."""
    import torch
    from safetensors.torch import save_file

    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    save_file({"w": torch.zeros(2)}, str(folder / "adapter_model.safetensors"))


def entries(root: Path) -> list[str]:
    """Folders under the root, hidden ones (temp folders) included."""
    return sorted(p.name for p in root.iterdir() if p.is_dir())


@pytest.fixture(params=["files", "postgres"])
def reg(request: pytest.FixtureRequest, tmp_path: Path) -> Registry:
    """A registry keeping its records beside the weights, or in a database of its own."""
    if request.param == "files":
        return Registry(tmp_path / "adapters")
    from tests.backends import new_schema, pg_url
    from tuner.pg import Database
    from tuner.pgregistry import PgRegistry

    return PgRegistry(tmp_path / "adapters", Database(pg_url(), new_schema()))


def reopen(reg: Registry) -> Registry:
    """Another instance over the same registry (another process would build this one)."""
    from tuner.pgregistry import PgRegistry

    return PgRegistry(reg.root, reg.database) if isinstance(reg, PgRegistry) else Registry(reg.root)


def test_save_list_get_delete(reg: Registry) -> None:
    rec = reg.save(
        fake_adapter,
        name="faq",
        base_model="tiny",
        dataset_hashes={"train": "abc"},
        source_documents={"d1": 1},
        hyperparameters={"rank": 2},
        metrics={"val_loss": 1.5},
    )
    assert (rec.id, rec.version, rec.lineage, rec.servable) == ("faq-v1", 1, ["faq-v1"], True)
    assert [r.id for r in reg.list()] == ["faq-v1"]
    got = reg.get("faq-v1")
    assert got == rec
    assert json.loads((reg.root / "faq-v1" / RECORD_FILE).read_text())["metrics"] == {
        "val_loss": 1.5
    }
    reg.delete("faq-v1")
    assert reg.list() == []
    assert entries(reg.root) == []
    with pytest.raises(RecordNotFound):
        reg.get("faq-v1")
    with pytest.raises(RecordNotFound):
        reg.get("../etc")


def test_versions_count_per_name_and_are_never_reused(reg: Registry) -> None:
    ids = [reg.save(fake_adapter, name=n).id for n in ("a", "a", "b", "a")]
    assert ids == ["a-v1", "a-v2", "b-v1", "a-v3"]
    reg.delete("a-v3")
    assert reg.save(fake_adapter, name="a").id == "a-v4"
    with pytest.raises(RegistryError, match="name"):
        reg.save(fake_adapter, name="../x")


def test_concurrent_saves_get_distinct_versions(reg: Registry) -> None:
    ids: list[str] = []
    start = threading.Barrier(4)

    def slow_save(folder: Path) -> None:
        fake_adapter(folder)
        time.sleep(0.05)

    def worker() -> None:
        start.wait()
        ids.append(reopen(reg).save(slow_save, name="x").id)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(ids) == ["x-v1", "x-v2", "x-v3", "x-v4"]


def test_failed_save_leaves_nothing(reg: Registry) -> None:
    def broken(folder: Path) -> None:
        (folder / "adapter_config.json").write_text("{}")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        reg.save(broken, name="faq")
    assert reg.list() == []
    assert entries(reg.root) == []
    with pytest.raises(RegistryError, match="adapter_config"):
        reg.save(lambda folder: None, name="faq")  # wrote no weights
    assert entries(reg.root) == []


def test_crash_leftover_is_ignored_then_cleaned(reg: Registry) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    dead = int(done.stdout)
    leftover = reg.root / f".tmp-{dead}-0123abcd-faq"
    leftover.mkdir(parents=True)
    fake_adapter(leftover)
    assert reg.list() == []
    reg.save(fake_adapter, name="faq")
    assert entries(reg.root) == ["faq-v1"]


def test_promote_refuses_failed_gate_unless_forced(reg: Registry) -> None:
    a = reg.save(fake_adapter, name="a").id
    b = reg.save(fake_adapter, name="b").id
    assert reg.promoted() is None
    reg.set_eval_gate(a, passed=False, details={"metric": "f1", "delta": -0.02})
    with pytest.raises(RegistryError, match="eval gate failed"):
        reg.promote(a)
    assert reg.promoted() is None
    assert reg.promote(a, force=True).promoted
    reg.set_eval_gate(b, passed=True, details={"metric": "f1", "delta": 0.05})
    reg.promote(b)
    promoted = reg.promoted()
    assert promoted is not None and promoted.id == b
    assert [r.id for r in reg.list() if r.promoted] == [b]  # one at a time
    with pytest.raises(RegistryError, match="promoted"):
        reg.delete(b)
    reg.delete(b, force=True)
    assert reg.promoted() is None


def test_full_model_is_recorded_but_not_servable(reg: Registry) -> None:
    from safetensors.torch import save_file

    def save_full(folder: Path) -> None:
        import torch

        (folder / "config.json").write_text("{}")
        save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))

    rec = reg.save(save_full, name="whole", method="full")
    assert not rec.servable and reg.get(rec.id).method == "full"
    with pytest.raises(RegistryError, match="not servable"):
        reg.promote(rec.id, force=True)


def test_mark_stale_from_a_lookup(reg: Registry) -> None:
    keep = reg.save(fake_adapter, name="keep", source_documents={"d1": 1, "d2": 3}).id
    changed = reg.save(fake_adapter, name="chg", source_documents={"d1": 1, "d3": 1}).id
    gone = reg.save(fake_adapter, name="gone", source_documents={"d4": 2}).id
    asked: list[list[str]] = []

    def lookup(doc_ids: list[str]) -> dict[str, int | None]:
        asked.append(doc_ids)
        return {"d1": 1, "d2": 3, "d3": 2, "d4": None}

    marked = reg.mark_stale(lookup)
    assert asked == [["d1", "d2", "d3", "d4"]]  # one lookup for every document
    assert sorted(r.id for r in marked) == [changed, gone]
    fresh = reopen(reg)  # persisted, not only in memory
    assert not fresh.get(keep).stale
    assert fresh.get(changed).stale_reason == "changed: d3"
    assert fresh.get(gone).stale_reason == "deleted: d4"
    assert "STALE" in describe(fresh.get(gone))
    assert reg.mark_stale(lookup) == []  # already stale: nothing new
    with pytest.raises(RegistryError, match="stale"):
        reg.promote(gone)


def test_lineage_walks_parents(reg: Registry) -> None:
    general = reg.save(fake_adapter, name="general").id
    domain = reg.save(fake_adapter, name="domain", parent=general).id
    sub = reg.save(fake_adapter, name="sub", parent=domain)
    assert sub.lineage == ["general-v1", "domain-v1", "sub-v1"]
    assert [r.id for r in reg.lineage(sub.id)] == sub.lineage
    assert "general-v1 -> domain-v1 -> sub-v1" in describe(sub)
    reg.delete(general)
    assert [r.id for r in reg.lineage(sub.id)] == ["domain-v1", "sub-v1"]
    with pytest.raises(RecordNotFound):
        reg.save(fake_adapter, name="orphan", parent="missing-v1")


def test_unknown_keys_are_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reg = Registry(tmp_path / "adapters")  # a ragtune.json edited by hand (the files' registry)
    rec = reg.save(fake_adapter, name="faq")
    path = reg.root / rec.id / RECORD_FILE
    body = json.loads(path.read_text())
    path.write_text(json.dumps({**body, "from_the_future": 1, "id": "spoofed"}))
    with caplog.at_level(logging.WARNING, logger="tuner.registry"):
        got = reg.get(rec.id)
    assert got.id == rec.id  # the folder name is the id
    assert "from_the_future" in caplog.text


def test_hand_copied_folder_is_untracked(reg: Registry) -> None:
    folder = reg.root / "copied"
    folder.mkdir(parents=True)
    fake_adapter(folder)
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": "tiny"})
    )
    (reg.root / "junk").mkdir()  # no adapter at all: skipped
    [rec] = reg.list()
    assert (rec.id, rec.tracked, rec.method, rec.base_model) == ("copied", False, "lora", "tiny")
    assert "untracked" in describe(rec)
    assert reg.set_eval_gate("copied", True, {}).tracked  # writing a record adopts it
    assert reg.get("copied").eval_gate is not None


def test_pickled_weights_are_refused(reg: Registry) -> None:
    folder = reg.root / "pickled"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04")
    assert reg.list() == []
    with pytest.raises(RegistryError, match="pickled"):
        reg.get("pickled")

    def save_bin(folder: Path) -> None:
        fake_adapter(folder)
        (folder / "adapter_model.bin").write_bytes(b"\x80\x04")

    with pytest.raises(RegistryError, match="pickled"):
        reg.save(save_bin, name="faq")
    assert entries(reg.root) == ["pickled"]


def test_describe_fits_one_screen() -> None:
    rec = Record(
        id="faq-v2",
        name="faq",
        version=2,
        source_documents={f"d{i}": 1 for i in range(50)},
        hyperparameters={"learning_rate": 2e-4, "rank": 8},
        metrics={
            "val_loss": 1.23456,
            "loss_curve": [[1, 2.0]],
            "probe": {
                "before": {"probe_nll": 2.0, "probe_accuracy": 0.5},
                "after": {"probe_nll": 2.5, "probe_accuracy": 0.3},
                "forgetting": True,
            },
        },
        eval_gate={"passed": True, "delta": 0.04},
        promoted=True,
    )
    text = describe(rec)
    assert text.splitlines()[0] == "faq-v2  [promoted]"
    assert "FORGETTING" in text and "+44 more" in text and "passed" in text
    assert len(text.splitlines()) < 25 and max(len(line) for line in text.splitlines()) < 120


def test_real_lora_loads_back_with_peft(reg: Registry, tiny_llama: Path) -> None:
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from service.adapters import AdapterSet

    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.1)  # so the adapter changes something
    rec = reg.save(
        lambda folder: model.save_pretrained(folder, safe_serialization=True),
        name="tiny",
        method="lora",
        base_model=str(tiny_llama),
    )
    assert AdapterSet(None, reg.root).available() == [rec.id]
    loaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_llama), str(reg.folder(rec.id))
    )
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-5)
        with loaded.disable_adapter():
            assert not torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-5)
    assert reg.get(rec.id).method == "lora"

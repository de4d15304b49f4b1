"""The adapter registry: versioned, atomically written folders under ``DATA_DIR/adapters``.

Each trained adapter lives in ``<root>/<name>-v<N>/``: the weights as written by
``save_pretrained`` (safetensors only) plus ``ragtune.json``, which carries its ``Record``
(method, base model, dataset hashes, source document versions, hyperparameters, metrics,
lineage, eval gate, staleness). The folders stay loadable by ``service.adapters.AdapterSet``
(``adapter_config.json`` + ``adapter_model.safetensors``); a ``full`` fine-tune saves a whole
model and is recorded as not servable. Versions are numbered per name under a file lock; a
folder is built under ``<root>/.tmp-*`` and renamed into place, so a crash leaves only a temp
folder that listing ignores and a later save removes. The promoted adapter is one id in
``<root>/promoted.json``; ``<root>/versions.json`` remembers the highest version per name,
so a deleted version's id is never given to a different adapter. Folders copied in by hand
(adapter files, no ``ragtune.json``) are listed as untracked; folders holding pickled weights
(``.bin``, ``.pt``) are refused. What a record holds, and how it reads, is ``tuner.record``.

Knows nothing of training, the index or serving: staleness comes from a lookup callable.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuner.durable import atomic_write_text, fsync, fsync_tree
from tuner.record import FIELDS, Record, stale_reason

log = logging.getLogger(__name__)

RECORD_FILE = "ragtune.json"
PROMOTED_FILE = "promoted.json"
GATED_METHODS = ("kto", "dpo")  # trained on users' ratings: promoted only through the eval gate
VERSIONS_FILE = "versions.json"  # the highest version each name ever had
LOCK_FILE = ".registry.lock"
TMP_PREFIX = ".tmp-"
# Names and ids, written once: the service's request types and the recipe's checks use these.
FOLDER_MAX_CHARS = 64  # an adapter id (its folder's name): what service.adapters accepts
NAME_MAX_CHARS = 48  # an adapter's name: leaves room for "-v<N>" in an id
FOLDER = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{FOLDER_MAX_CHARS - 1}}}$")
NAME = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{NAME_MAX_CHARS - 1}}}$")
ID = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)-v(?P<version>[1-9][0-9]{0,8})$")
NAME_RULE = f"1-{NAME_MAX_CHARS} letters, digits, '.', '_' or '-' (starting with a letter or digit)"
TEMP = re.compile(r"^\.tmp-(?P<pid>\d+)-[0-9a-f]{8}-")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def valid_name(name: str) -> bool:
    """Whether ``name`` may name an adapter (its versions are ``<name>-v<N>``)."""
    return NAME.fullmatch(name) is not None


class RegistryError(RuntimeError):
    """A registry operation was refused (bad name, failed gate, pickled weights, ...)."""


class RecordNotFound(LookupError):
    def __init__(self, adapter_id: str, why: str = "not in the registry") -> None:
        super().__init__(f"adapter {adapter_id!r}: {why}")
        self.adapter_id = adapter_id


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _atomic_write_json(path: Path, body: Any) -> None:
    atomic_write_text(path, json.dumps(body, indent=2, sort_keys=True) + "\n")


def _temp_name(label: str) -> str:
    return f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{label}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pickles(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)


class Registry:
    """Adapter folders under ``root``; every mutation holds one inter-process file lock."""

    def __init__(self, root: Path, lock_timeout: float = 60.0) -> None:
        self.root = Path(root)
        self.lock_timeout = lock_timeout

    # ---- paths and locking -----------------------------------------------------------------
    def _lock(self) -> Any:
        from filelock import FileLock

        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / LOCK_FILE), timeout=self.lock_timeout)

    def folder(self, adapter_id: str) -> Path:
        """The folder of an existing adapter (what ``PeftModel.from_pretrained`` reads)."""
        if not FOLDER.fullmatch(adapter_id):
            raise RecordNotFound(
                adapter_id, f"ids are 1-{FOLDER_MAX_CHARS} letters, digits, '.', '_' or '-'"
            )
        path = self.root / adapter_id
        if not path.is_dir():
            raise RecordNotFound(adapter_id)
        return path

    # ---- reading ---------------------------------------------------------------------------
    def _promoted_id(self) -> str | None:
        """The promoted adapter's id (where the registry keeps it: ``promoted.json``)."""
        path = self.root / PROMOTED_FILE
        if not path.is_file():
            return None
        try:
            value = json.loads(path.read_text(encoding="utf-8")).get("id")
        except (OSError, ValueError, AttributeError) as e:
            log.warning("ignoring unreadable %s: %s", path, e)
            return None
        return value if isinstance(value, str) else None

    def _read(self, path: Path, promoted_id: str | None) -> Record:
        """The record of one folder; raises RegistryError when it is not a usable adapter."""
        pickles = _pickles(path)
        if pickles:
            raise RegistryError(
                f"{path.name}: holds pickled weights ({', '.join(pickles)}); only safetensors "
                "are loaded: re-save with save_pretrained(..., safe_serialization=True)"
            )
        body = self._record_body(path)
        if body is not None:
            record = self._parse(path.name, body)
        elif (path / ADAPTER_CONFIG).is_file() and (path / ADAPTER_WEIGHTS).is_file():
            record = self._untracked(path)
        else:
            raise RegistryError(f"{path.name}: neither {RECORD_FILE} nor adapter safetensors")
        record.promoted = record.id == promoted_id
        return record

    def _record_body(self, path: Path) -> Any:
        """The record of the adapter in folder ``path`` as stored (its ``ragtune.json``), or
        None for a folder without one."""
        record_file = path / RECORD_FILE
        if not record_file.is_file():
            return None
        try:
            return json.loads(record_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise RegistryError(f"{path.name}: unreadable {RECORD_FILE}: {e}") from e

    def _parse(self, folder_name: str, body: Any) -> Record:
        if not isinstance(body, dict):
            raise RegistryError(f"{folder_name}: {RECORD_FILE} is not a JSON object")
        unknown = sorted(set(body) - FIELDS - {"promoted", "tracked"})
        if unknown:
            log.warning("%s/%s: ignoring unknown keys %s", folder_name, RECORD_FILE, unknown)
        known = {k: v for k, v in body.items() if k in FIELDS}
        known["id"] = folder_name  # the folder name is the id, whatever the file says
        known.setdefault("name", folder_name)
        known.setdefault("version", 0)
        try:
            return Record(**known)
        except TypeError as e:
            raise RegistryError(f"{folder_name}: bad {RECORD_FILE}: {e}") from e

    def _untracked(self, path: Path) -> Record:
        """Minimal fields for a hand-copied adapter folder, read from its adapter_config.json."""
        try:
            config = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = {}
        config = config if isinstance(config, dict) else {}
        match = ID.match(path.name)
        peft_type = str(config.get("peft_type") or "unknown").lower()
        if peft_type == "lora" and config.get("use_dora"):
            peft_type = "dora"
        mtime = datetime.fromtimestamp((path / ADAPTER_WEIGHTS).stat().st_mtime, UTC)
        return Record(
            id=path.name,
            name=match["name"] if match else path.name,
            version=int(match["version"]) if match else 0,
            method=peft_type,
            base_model=str(config.get("base_model_name_or_path") or ""),
            created=mtime.isoformat(timespec="seconds"),
            lineage=[path.name],
            tracked=False,
        )

    def list(self) -> list[Record]:
        """Every usable adapter, by name then version; temp folders and refused ones are left
        out (the refused ones with a warning)."""
        if not self.root.is_dir():
            return []
        promoted_id = self._promoted_id()
        records = []
        for path in self.root.iterdir():
            if not path.is_dir() or path.name.startswith(".") or not FOLDER.fullmatch(path.name):
                continue
            try:
                records.append(self._read(path, promoted_id))
            except RegistryError as e:
                log.warning("registry: skipping %s", e)
        return sorted(records, key=lambda r: (r.name, r.version, r.id))

    def get(self, adapter_id: str) -> Record:
        return self._read(self.folder(adapter_id), self._promoted_id())

    def promoted(self) -> Record | None:
        promoted_id = self._promoted_id()
        if promoted_id is None:
            return None
        try:
            return self.get(promoted_id)
        except (RecordNotFound, RegistryError) as e:
            log.warning("promoted adapter is unusable: %s", e)
            return None

    def lineage(self, adapter_id: str) -> builtins.list[Record]:
        """The chain of parents, oldest first, ending with ``adapter_id``; a parent that was
        deleted ends the walk (with a warning)."""
        chain = [self.get(adapter_id)]
        seen = {adapter_id}
        while chain[0].parent is not None and chain[0].parent not in seen:
            parent = chain[0].parent
            seen.add(parent)
            try:
                chain.insert(0, self.get(parent))
            except (RecordNotFound, RegistryError) as e:
                log.warning("lineage of %s stops: %s", adapter_id, e)
                break
        return chain

    # ---- saving ----------------------------------------------------------------------------
    def save(
        self,
        save_fn: Callable[[Path], None],
        *,
        name: str,
        method: str = "lora",
        component: str = "generator",
        base_model: str = "",
        dataset_hashes: Mapping[str, str] | None = None,
        source_documents: Mapping[str, Any] | None = None,
        feedback_ids: Sequence[str] | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        parent: str | None = None,
        eval_gate: Mapping[str, Any] | None = None,
        sweep: Mapping[str, Any] | None = None,
    ) -> Record:
        """Write a new version of ``name``: ``save_fn(folder)`` writes the weights into a temp
        folder under the root; the record is added, everything fsynced and renamed into place."""
        if not valid_name(name):
            raise RegistryError(f"name {name!r}: {NAME_RULE}")
        parent_record = self.get(parent) if parent is not None else None
        self.root.mkdir(parents=True, exist_ok=True)
        self._clean_temps()
        tmp = self.root / _temp_name(name)
        tmp.mkdir()
        try:
            save_fn(tmp)
            servable = self._check_weights(tmp, method) and component == "generator"
            with self._lock():
                version = self._next_version(name)
                record = Record(
                    id=f"{name}-v{version}",
                    name=name,
                    version=version,
                    method=method,
                    component=component,
                    base_model=base_model,
                    dataset_hashes=dict(dataset_hashes or {}),
                    source_documents=dict(source_documents or {}),
                    feedback_ids=list(feedback_ids or []),
                    hyperparameters=dict(hyperparameters or {}),
                    metrics=dict(metrics or {}),
                    created=_now(),
                    parent=parent,
                    eval_gate=dict(eval_gate) if eval_gate is not None else None,
                    sweep=dict(sweep) if sweep is not None else None,
                    servable=servable,
                )
                record.lineage = [*self._lineage_ids(parent_record), record.id]
                _atomic_write_json(tmp / RECORD_FILE, record.to_json())
                fsync_tree(tmp)
                os.replace(tmp, self.root / record.id)
                fsync(self.root)
                self._keep(record)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("registry: saved %s (%s, %s)", record.id, method, base_model or "base unknown")
        return record

    @staticmethod
    def _lineage_ids(parent: Record | None) -> builtins.list[str]:
        if parent is None:
            return []
        return list(parent.lineage) if parent.lineage else [parent.id]

    @staticmethod
    def _check_weights(folder: Path, method: str) -> bool:
        """Refuse pickles and empty folders; return whether the folder is a servable adapter."""
        pickles = _pickles(folder)
        if pickles:
            raise RegistryError(
                f"save wrote pickled weights ({', '.join(pickles)}); pass "
                "safe_serialization=True to save_pretrained"
            )
        if method == "full":
            if not any(folder.glob("*.safetensors")):
                raise RegistryError("save wrote no .safetensors model weights")
            return False
        if not (folder / ADAPTER_CONFIG).is_file() or not (folder / ADAPTER_WEIGHTS).is_file():
            raise RegistryError(f"save wrote no {ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}")
        return True

    def _next_version(self, name: str) -> int:
        """One more than the highest version ``name`` ever had (call under the lock): on disk
        or remembered in ``versions.json``, so a deleted version's id is never reused."""
        seen = self._versions()
        versions = [0, int(seen.get(name, 0))]
        for path in self.root.iterdir():
            match = ID.match(path.name)
            if match and match["name"] == name:
                versions.append(int(match["version"]))
        version = max(versions) + 1
        self._remember_version(name, version)
        return version

    def _remember_version(self, name: str, version: int) -> None:
        _atomic_write_json(self.root / VERSIONS_FILE, {**self._versions(), name: version})

    def _versions(self) -> dict[str, int]:
        path = self.root / VERSIONS_FILE
        try:
            body = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable %s: %s", path, e)
            return {}
        return (
            {k: v for k, v in body.items() if isinstance(v, int)} if isinstance(body, dict) else {}
        )

    def _clean_temps(self) -> None:
        """Remove temp folders left by saves whose process is gone."""
        for path in self.root.glob(f"{TMP_PREFIX}*"):
            match = TEMP.match(path.name)
            if match and _pid_alive(int(match["pid"])):
                continue
            log.warning("registry: removing %s left by an interrupted save", path.name)
            shutil.rmtree(path, ignore_errors=True)

    # ---- changing records ------------------------------------------------------------------
    def _update(self, adapter_id: str, change: Callable[[Record], None]) -> Record:
        """Read, change and atomically rewrite one record, under the lock."""
        with self._lock():
            path = self.folder(adapter_id)
            record = self._read(path, self._promoted_id())
            change(record)
            record.tracked = True  # writing ragtune.json adopts a hand-copied folder
            _atomic_write_json(path / RECORD_FILE, record.to_json())
            self._keep(record)
            return record

    # ---- where records live: hooks for another home (tuner.pgregistry) ---------------------
    def _keep(self, record: Record) -> None:
        """``record`` was written (its ``ragtune.json`` is the record here)."""

    def _set_promoted(self, body: Mapping[str, Any] | None) -> None:
        """Point the promotion at ``body["id"]``, or at nothing."""
        if body is None:
            (self.root / PROMOTED_FILE).unlink(missing_ok=True)
            fsync(self.root)
        else:
            _atomic_write_json(self.root / PROMOTED_FILE, dict(body))

    def _forget(self, adapter_id: str) -> None:
        """``adapter_id``'s folder is gone."""

    def set_eval_gate(self, adapter_id: str, passed: bool, details: Mapping[str, Any]) -> Record:
        def change(record: Record) -> None:
            record.eval_gate = {**dict(details), "passed": bool(passed), "checked": _now()}

        return self._update(adapter_id, change)

    def promote(self, adapter_id: str, force: bool = False) -> Record:
        """Make ``adapter_id`` the one promoted adapter. Refused when its eval gate failed, or
        was never run for a preference-tuned adapter, or it is stale (unless ``force``), and
        always for a non-servable (full) model."""
        with self._lock():
            record = self.get(adapter_id)
            if record.component == "retriever":
                raise RegistryError(
                    f"{adapter_id}: an embedder is activated by re-embedding the index "
                    f"('ragtune reindex --adapter {adapter_id}' or POST /v1/index/reindex)"
                )
            if not record.servable:
                raise RegistryError(f"{adapter_id}: a {record.method} model is not servable")
            gate = record.eval_gate
            if gate is not None and not gate.get("passed", False) and not force:
                raise RegistryError(f"{adapter_id}: its eval gate failed; use force to promote")
            if gate is None and record.method in GATED_METHODS and not force:
                raise RegistryError(
                    f"{adapter_id}: a {record.method} adapter is promoted through its eval gate "
                    f"('ragtune eval --gate {adapter_id} --dataset D'); use force to skip it"
                )
            if record.stale and not force:
                raise RegistryError(
                    f"{adapter_id}: stale ({record.stale_reason}); use force to promote"
                )
            self._set_promoted({"id": adapter_id, "promoted": _now(), "forced": bool(force)})
            record.promoted = True
        log.info("registry: promoted %s%s", adapter_id, " (forced)" if force else "")
        return record

    def demote(self) -> None:
        """No adapter promoted any more."""
        with self._lock():
            self._set_promoted(None)

    def delete(self, adapter_id: str, force: bool = False) -> None:
        """Remove an adapter folder; the promoted one only with ``force`` (which demotes it)."""
        with self._lock():
            path = self.folder(adapter_id)
            if self._promoted_id() == adapter_id:
                if not force:
                    raise RegistryError(f"{adapter_id} is promoted; use force to delete it")
                self._set_promoted(None)
            doomed = self.root / _temp_name(f"deleted-{adapter_id}")
            os.replace(path, doomed)  # gone from list() at once, even if rmtree is cut short
            fsync(self.root)
            self._forget(adapter_id)
            shutil.rmtree(doomed, ignore_errors=True)
        log.info("registry: deleted %s", adapter_id)

    def mark_stale(
        self, lookup: Callable[[builtins.list[str]], Mapping[str, Any | None]]
    ) -> builtins.list[Record]:
        """Mark (and persist) stale every adapter trained on a document that changed or was
        deleted. ``lookup(doc_ids)`` returns {doc_id: current version, or None if deleted};
        an id it leaves out counts as deleted. Returns the records newly marked."""
        records = [r for r in self.list() if r.tracked and r.source_documents and not r.stale]
        doc_ids = sorted({d for r in records for d in r.source_documents})
        if not doc_ids:
            return []
        current = lookup(doc_ids)
        marked = []
        for record in records:
            reason = stale_reason(record.source_documents, current)
            if reason is None:
                continue

            def change(r: Record, why: str = reason) -> None:
                r.stale, r.stale_reason = True, why

            try:
                marked.append(self._update(record.id, change))
            except RecordNotFound:
                continue  # deleted while we looked
            log.info("registry: %s is stale: %s", record.id, reason)
        return marked

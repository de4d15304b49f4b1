"""Turn a recipe's datasets into the files a training run reads, validated before any training.

``prepare(recipe, job_dir, ...)`` reads each dataset (a JSONL path, an uploaded file id, or
synthetic data mined from the live index), validates it against the tokenizer (schema, empty
answers, length, duplicates, minimum count; every problem with its line), splits each with the
recipe's seed, mixes the training splits by weight (multi-task), and writes
``job_dir/data/{train,val,test}.jsonl`` and ``manifest.json`` (dataset hashes, counts, and the
documents synthetic examples came from with their versions, for staleness). Runs where the
index is open (the service process, or the CLI); the training process only reads its output.
Knows nothing of models beyond a tokenizer, nor of HTTP.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retriever.errors import DocumentNotFound
from tuner.config import DataSpec, Recipe

log = logging.getLogger(__name__)
FILE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass
class Prepared:
    train: int
    val: int
    test: int
    dataset_hashes: dict[str, str]
    source_documents: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def prepare(
    recipe: Recipe,
    job_dir: Path,
    *,
    files_dir: Path,
    tokenizer: Any,
    retriever: Any = None,
    generator: Any = None,
) -> Prepared:
    from tuner import data as tdata

    hp = recipe.hyperparameters
    trains, weights, vals, tests = [], [], [], []
    hashes: dict[str, str] = {}
    for i, spec in enumerate(recipe.datasets):
        label, examples = _read(spec, files_dir, retriever, generator)
        examples = tdata.validate(examples, tokenizer, hp.max_length, recipe.min_examples)
        hashes[f"{i}:{label}"] = tdata.dataset_hash(examples)
        train, val, test = tdata.split(examples, hp.val_fraction, hp.test_fraction, hp.seed)
        trains.append(train)
        weights.append(spec.weight)
        vals += val
        tests += test
    train = trains[0] if len(trains) == 1 else tdata.mix(trains, weights, hp.seed)
    out = job_dir / "data"
    out.mkdir(parents=True, exist_ok=True)
    for name, split in (("train", train), ("val", vals), ("test", tests)):
        tdata.write_jsonl(split, out / f"{name}.jsonl")
    prepared = Prepared(
        len(train), len(vals), len(tests), hashes, _source_documents(train + vals, retriever)
    )
    (out / "manifest.json").write_text(json.dumps(prepared.to_dict(), indent=2))
    log.info(
        "prepared %s: %d train, %d val, %d test", recipe.name, len(train), len(vals), len(tests)
    )
    return prepared


def _read(spec: DataSpec, files_dir: Path, retriever: Any, generator: Any) -> tuple[str, list[Any]]:
    from tuner import data as tdata

    if spec.path is not None:
        return Path(spec.path).name, tdata.read_jsonl(Path(spec.path), spec.format, spec.template)
    if spec.file_id is not None:
        if not FILE_ID.match(spec.file_id):
            raise ValueError(f"dataset.file_id: not a file id: {spec.file_id!r}")
        path = files_dir / f"{spec.file_id}.jsonl"
        if not path.is_file():
            raise ValueError(f"dataset.file_id: no uploaded file {spec.file_id!r} (POST /v1/files)")
        return spec.file_id, tdata.read_jsonl(path, spec.format, spec.template)
    assert spec.synthetic is not None
    if retriever is None:
        raise ValueError("dataset.synthetic: needs the document index, which is not open here")
    from tuner import synth

    examples = synth.synthesize(retriever, spec.synthetic, generator)
    return f"synthetic-{spec.synthetic.kind}", examples


def _source_documents(examples: list[Any], retriever: Any) -> dict[str, int]:
    """Each document an example came from, with the version it had (for staleness)."""
    ids = sorted({d for e in examples for d in e.meta.get("doc_ids", [])})
    if not ids or retriever is None:
        return {}
    versions = {}
    for doc_id in ids:
        try:
            versions[doc_id] = int(retriever.get(doc_id).version)
        except DocumentNotFound:
            continue  # deleted since: the adapter is stale from birth, which mark_stale shows
    return versions

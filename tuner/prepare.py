"""Turn a recipe's datasets into the files a training run reads, validated before any training.

``prepare(recipe, job_dir, ...)`` reads each dataset (a JSONL path, an uploaded file id, or
synthetic data mined from the live index), validates it against the tokenizer (schema, empty
answers, length, duplicates, minimum count; every problem with its line), splits each with the
recipe's seed, mixes the training splits by weight (multi-task), and writes
``job_dir/data/{train,val,test}.jsonl`` and ``manifest.json`` (dataset hashes, counts, and the
documents synthetic examples came from with their versions, for staleness). Runs where the
index is open (the service process, or the CLI); the training process only reads its output.
``prepare_pairs`` does the same for the retriever: (query, positive, hard negatives) pairs from
pair files or cut from the indexed chunks, negatives mined from the live index, written to
``job_dir/data/{train,val}.jsonl``. Knows nothing of models beyond a tokenizer, nor of HTTP.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retriever.errors import DocumentNotFound
from tuner.config import DataSpec, Recipe
from tuner.data import DataError

log = logging.getLogger(__name__)
FILE_ID_MAX_CHARS = 64  # POST /v1/files ids: written once, here
FILE_ID = re.compile(
    rf"^[A-Za-z0-9_-]{{1,{FILE_ID_MAX_CHARS}}}$"
)  # POST /v1/files ids, written once


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
    from tuner import mixing

    hp = recipe.hyperparameters
    trains, weights, vals, tests = [], [], [], []
    hashes: dict[str, str] = {}
    for i, spec in enumerate(recipe.datasets):
        label, examples = _read(spec, files_dir, retriever, generator)
        examples = tdata.validate(examples, tokenizer, hp.max_length, recipe.min_examples)
        hashes[f"{i}:{label}"] = mixing.dataset_hash(examples)
        train, val, test = mixing.split(examples, hp.val_fraction, hp.test_fraction, hp.seed)
        trains.append(train)
        weights.append(spec.weight)
        vals += val
        tests += test
    train = trains[0] if len(trains) == 1 else mixing.mix(trains, weights, hp.seed)
    out = job_dir / "data"
    out.mkdir(parents=True, exist_ok=True)
    for name, split in (("train", train), ("val", vals), ("test", tests)):
        tdata.write_jsonl(split, out / f"{name}.jsonl")
    prepared = Prepared(
        len(train),
        len(vals),
        len(tests),
        hashes,
        _document_versions({d for e in train + vals for d in e.meta.get("doc_ids", [])}, retriever),
    )
    (out / "manifest.json").write_text(json.dumps(prepared.to_dict(), indent=2))
    log.info(
        "prepared %s: %d train, %d val, %d test", recipe.name, len(train), len(vals), len(tests)
    )
    return prepared


# (a dataset's FeedbackSpec, the recipe) -> (rows, {"feedback_ids": [...], "skipped": {...}})
FeedbackSource = Callable[[Any, Recipe], tuple[list[Any], dict[str, Any]]]


def prepare_preferences(
    recipe: Recipe,
    job_dir: Path,
    *,
    files_dir: Path,
    tokenizer: Any,
    feedback: FeedbackSource | None = None,
) -> Prepared:
    """kto rows or dpo pairs from each dataset: a preference file, an uploaded one, or the
    ratings of answers (``feedback(spec, recipe)``, a ``FeedbackSource``, returns the rows with
    their prompts rebuilt as served, and what it used and skipped). Checked against the
    tokenizer, split by prompt into train, val and a held-out share (``test.jsonl``, for reward
    accuracy), written to ``job_dir/data``; the manifest lists the feedback ids used."""
    from tuner import preference_data as pdata

    hp, kind = recipe.hyperparameters, recipe.method
    rows: list[Any] = []
    hashes: dict[str, str] = {}
    info: dict[str, Any] = {"feedback_ids": [], "skipped": {}}
    for i, spec in enumerate(recipe.datasets):
        if spec.feedback is not None:
            if feedback is None:
                raise ValueError("dataset.feedback: needs the answer log, which is not open here")
            got, used = feedback(spec.feedback, recipe)
            label = "feedback"
            info["feedback_ids"] += used.get("feedback_ids", [])
            for reason, n in used.get("skipped", {}).items():
                info["skipped"][reason] = info["skipped"].get(reason, 0) + n
        elif spec.path is not None:
            label, got = Path(spec.path).name, pdata.read_jsonl(spec.path)
        else:
            assert spec.file_id is not None
            label, got = spec.file_id, pdata.read_jsonl(_uploaded(spec.file_id, files_dir))
        if spec.feedback is None:  # rows exported from feedback keep the ids they came from
            info["feedback_ids"] += [i for r in got for i in r.meta.get("feedback_ids", [])]
        got = _served_alike(got, tokenizer, info["skipped"])
        hashes[f"{i}:{label}"] = pdata.dataset_hash(got)
        rows += got
    where = "feedback" if all(s.feedback for s in recipe.datasets) else None
    rows = pdata.validate(rows, tokenizer, hp.max_length, recipe.min_examples, kind, where)
    train, val, test = pdata.split(rows, hp.val_fraction, recipe.preference.held_out, hp.seed)
    if kind == "kto" and len({r.label for r in train}) < 2:
        raise DataError(
            [
                (
                    0,
                    "the training split holds one label only (the held-out and validation "
                    "prompts took the other); rate more answers or lower preference.held_out",
                )
            ]
        )
    out = job_dir / "data"
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", train), ("val", val), ("test", test)):
        pdata.write_jsonl(part, out / f"{name}.jsonl")
    prepared = Prepared(len(train), len(val), len(test), hashes)
    body = {
        **prepared.to_dict(),
        "kind": kind,
        "feedback_ids": sorted(set(info["feedback_ids"])),
        "skipped": info["skipped"],
    }
    (out / "manifest.json").write_text(json.dumps(body, indent=2))
    log.info(
        "prepared %s: %d %s train, %d val, %d held out%s",
        recipe.name,
        len(train),
        kind,
        len(val),
        len(test),
        f"; skipped {info['skipped']}" if info["skipped"] else "",
    )
    return prepared


def _served_alike(rows: list[Any], tokenizer: Any, skipped: dict[str, int]) -> list[Any]:
    """The rows whose prompt is as many tokens now as when it was served (``prompt_tokens``,
    where the row knows it): another tokenizer or chat template would train on other text."""
    from tuner import preference_data as pdata

    kept = []
    for row in rows:
        served = row.meta.get("prompt_tokens")
        if served is not None and len(pdata.prompt_ids(tokenizer, row.prompt)) != served:
            reason = "served with another tokenizer or chat template"
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        kept.append(row)
    return kept


def prepare_pairs(
    recipe: Recipe, job_dir: Path, *, files_dir: Path, retriever: Any = None
) -> Prepared:
    """The retriever tuner's data: pairs from each dataset (a pair file, or pseudo-queries cut
    from the indexed chunks), hard negatives mined from the live index for pairs that bring
    none, repeated queries dropped, a held-out split for the IR evaluator."""
    import random

    from tuner import pairs as tpairs

    hp, rt = recipe.hyperparameters, recipe.retriever
    found: list[tpairs.Pair] = []
    hashes: dict[str, str] = {}
    for i, spec in enumerate(recipe.datasets):
        label, got = _read_pairs(spec, files_dir, retriever)
        hashes[f"{i}:{label}"] = _pairs_hash(got)
        found += got
    found = tpairs.dedup_queries(found)
    if rt.negatives and retriever is not None and any(not p.negatives for p in found):
        found = _mine_negatives(found, rt, retriever)
    if len(found) < recipe.min_examples:
        raise DataError(
            [(0, f"{len(found)} usable pairs; the recipe needs at least {recipe.min_examples}")]
        )
    order = list(range(len(found)))
    random.Random(hp.seed).shuffle(order)
    n_val = int(len(found) * hp.val_fraction)
    val = [found[i] for i in sorted(order[:n_val])]
    train = [found[i] for i in sorted(order[n_val:])]
    out = job_dir / "data"
    _write_pairs(out, train, val)
    prepared = Prepared(
        len(train),
        len(val),
        0,
        hashes,
        _document_versions({p.doc_id for p in train + val if p.doc_id}, retriever),
    )
    body = {
        **prepared.to_dict(),
        "negatives_mean": round(sum(len(p.negatives) for p in found) / len(found), 2),
    }
    (out / "manifest.json").write_text(json.dumps(body, indent=2))
    log.info("prepared %s: %d train pairs, %d held out", recipe.name, len(train), len(val))
    return prepared


def _mine_negatives(found: list[Any], rt: Any, retriever: Any) -> list[Any]:
    """Hard negatives from the live index for the pairs that bring none; training uses as many
    negatives as its poorest pair has, so the pairs mined short are dropped."""
    from tuner import pairs as tpairs

    bare = [p for p in found if not p.negatives]
    log.info("mining %d hard negatives for %d pairs (%s)", rt.negatives, len(bare), rt.mine_mode)
    mined = tpairs.mine_negatives(
        bare,
        lambda q, k: retriever.search(q, k=k, mode=rt.mine_mode),
        n=rt.negatives,
        window=rt.window,
        margin=rt.margin,
    )
    kept = [p for p in mined if len(p.negatives) >= rt.negatives]
    if len(kept) < len(mined):
        log.info(
            "dropped %d pairs with fewer than %d hard negatives",
            len(mined) - len(kept),
            rt.negatives,
        )
    return [p for p in found if p.negatives] + kept


def _write_pairs(out: Path, train: list[Any], val: list[Any]) -> None:
    """train.jsonl, val.jsonl and an empty test.jsonl into ``out``."""
    from tuner import pairs as tpairs

    out.mkdir(parents=True, exist_ok=True)
    tpairs.write_pairs(train, out / "train.jsonl")
    tpairs.write_pairs(val, out / "val.jsonl")
    (out / "test.jsonl").write_text("")


def _read_pairs(spec: DataSpec, files_dir: Path, retriever: Any) -> tuple[str, list[Any]]:
    from tuner import pairs as tpairs
    from tuner import synth

    if spec.path is not None:
        return Path(spec.path).name, tpairs.read_pairs(spec.path)
    if spec.file_id is not None:
        return spec.file_id, tpairs.read_pairs(_uploaded(spec.file_id, files_dir))
    assert spec.synthetic is not None
    if retriever is None:
        raise ValueError("dataset.synthetic: needs the document index, which is not open here")
    chunks = synth.index_chunks(retriever)
    got = tpairs.pseudo_pairs(chunks, spec.synthetic.max_examples, seed=spec.synthetic.seed)
    log.info("synthesised %d pseudo-query pairs from %d chunks", len(got), len(chunks))
    return "synthetic-pairs", got


def _pairs_hash(pairs: list[Any]) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps([p.query, p.positive, p.negatives], ensure_ascii=False).encode())
    return h.hexdigest()


def _uploaded(file_id: str, files_dir: Path) -> Path:
    if not FILE_ID.fullmatch(file_id):
        raise ValueError(f"dataset.file_id: not a file id: {file_id!r}")
    path = files_dir / f"{file_id}.jsonl"
    if not path.is_file():
        raise ValueError(f"dataset.file_id: no uploaded file {file_id!r} (POST /v1/files)")
    return path


def _read(spec: DataSpec, files_dir: Path, retriever: Any, generator: Any) -> tuple[str, list[Any]]:
    from tuner import data as tdata

    if spec.path is not None:
        return Path(spec.path).name, tdata.read_jsonl(Path(spec.path), spec.format, spec.template)
    if spec.file_id is not None:
        path = _uploaded(spec.file_id, files_dir)
        return spec.file_id, tdata.read_jsonl(path, spec.format, spec.template)
    assert spec.synthetic is not None
    if retriever is None:
        raise ValueError("dataset.synthetic: needs the document index, which is not open here")
    from tuner import examples as texamples

    examples = texamples.synthesize(retriever, spec.synthetic, generator)
    return f"synthetic-{spec.synthetic.kind}", examples


def _document_versions(doc_ids: set[str], retriever: Any) -> dict[str, int]:
    """Each document the training data came from, with the version it had (for staleness)."""
    if not doc_ids or retriever is None:
        return {}
    versions = {}
    for doc_id in sorted(doc_ids):
        try:
            versions[doc_id] = int(retriever.get(doc_id).version)
        except DocumentNotFound:
            continue  # deleted since: the adapter is stale from birth, which mark_stale shows
    return versions

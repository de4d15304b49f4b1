"""/v1/files: upload training or evaluation data (one JSONL file) and list the uploads.

An upload is stored as ``DATA_DIR/files/<random id>.jsonl`` with its metadata beside it in
``<id>.json``; the client's file name is kept as metadata only and never becomes a path. The body
size is bounded by the service's body limit. Every line must be UTF-8 JSON objects of one known
shape (chat, alpaca, prompt_completion, SQuAD-style, or a task template's fields), else 422
naming the line; the full schema check happens when a job validates its data (tuner.data) or an
eval run reads it (eval.datasets).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

import anyio
from fastapi import APIRouter, UploadFile
from pydantic import BaseModel, ConfigDict

from retriever.loaders import safe_name
from service.auth import Reader, Writer
from service.deps import State
from service.errors import ServiceError

router = APIRouter(prefix="/v1/files", tags=["tuning"])

SHAPES = (  # (format reported, keys a record must hold), the first match wins
    ("chat", {"messages"}),
    ("chat", {"conversations"}),
    ("alpaca", {"instruction", "output"}),
    ("prompt_completion", {"prompt", "completion"}),
    ("squad", {"context", "question", "answers"}),  # an eval dataset (POST /v1/eval/runs)
    ("qa", {"question", "answer"}),
    ("qa", {"question", "answers"}),
    ("summarization", {"text", "summary"}),
    ("translation", {"text", "translation"}),
    ("classification", {"text", "label"}),
)


class FileOut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    name: str
    bytes: int
    lines: int
    format: str
    created: float


class FilesOut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    files: list[FileOut]


def sniff(raw: bytes) -> tuple[int, str]:
    """(records, format) of a JSONL upload; ``ValueError`` naming the first bad line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = raw[: exc.start].count(b"\n") + 1
        raise ValueError(f"line {where}: not UTF-8") from None
    found: str | None = None
    records = 0
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"line {number}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"line {number}: a JSON object is expected")
        shape = next((name for name, keys in SHAPES if keys <= record.keys()), None)
        if shape is None:
            raise ValueError(f"line {number}: no known format (keys {sorted(record)[:8]})")
        if found is not None and shape != found:
            raise ValueError(f"line {number}: {shape} record in a {found} file")
        found, records = shape, records + 1
    if found is None:
        raise ValueError("line 1: the file holds no records")
    return records, found


def _store(folder: Path, name: str, raw: bytes) -> FileOut:
    lines, fmt = sniff(raw)
    folder.mkdir(parents=True, exist_ok=True)
    file_id = f"file-{secrets.token_hex(8)}"
    meta = FileOut(
        id=file_id, name=name, bytes=len(raw), lines=lines, format=fmt, created=time.time()
    )
    _write(folder / f"{file_id}.jsonl", raw)
    _write(folder / f"{file_id}.json", meta.model_dump_json().encode())
    return meta


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@router.post("", status_code=201)
async def upload(file: UploadFile, state: State, _: Writer) -> FileOut:
    """Upload one JSONL file of training examples."""
    raw = await file.read()
    name = safe_name(file.filename or "upload.jsonl")
    try:
        return await anyio.to_thread.run_sync(_store, state.settings.layout.files, name, raw)
    except ValueError as exc:
        raise ServiceError(422, "invalid_file", f"{name}: {exc}") from None


@router.get("")
def list_files(state: State, _: Reader) -> FilesOut:
    folder = state.settings.layout.files
    metas = sorted(folder.glob("file-*.json")) if folder.is_dir() else []
    files = [FileOut.model_validate_json(p.read_bytes()) for p in metas]
    return FilesOut(files=sorted(files, key=lambda f: f.created, reverse=True))

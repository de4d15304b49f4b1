"""/v1/files: upload training or evaluation data (one JSONL file) and list the uploads.

An upload is stored as ``DATA_DIR/files/<random id>.jsonl`` with its metadata beside it in
``<id>.json``; the client's file name is kept as metadata only and never becomes a path. The
body size is bounded by the service's body limit. Lines are read by ``retriever.jsonl`` (split
on ``\n`` only, as every JSONL input is), and every line must be a UTF-8 JSON object of one
known shape (chat, alpaca, prompt_completion, kto or dpo preference rows, SQuAD-style, or a
task template's fields), else 422: the message names the first bad line and ``details`` lists
every one (``{"file", "line", "reason"}``, up to ``SHOWN_PROBLEMS``). The full schema check
happens when a job validates its data (tuner.data) or an eval run reads it (eval.datasets).
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from pathlib import Path

import anyio
from fastapi import APIRouter, UploadFile
from pydantic import BaseModel, ConfigDict

from retriever import jsonl
from retriever.loaders import safe_name
from service.auth import Reader, Writer
from service.deps import State
from service.errors import ServiceError

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/files", tags=["tuning"])

SHAPES = (  # (format reported, keys a record must hold), the first match wins
    ("chat", {"messages"}),
    ("chat", {"conversations"}),
    ("alpaca", {"instruction", "output"}),
    ("dpo", {"prompt", "chosen", "rejected"}),  # preference pairs (method dpo)
    ("kto", {"prompt", "completion", "label"}),  # rated completions (method kto)
    ("prompt_completion", {"prompt", "completion"}),
    ("squad", {"context", "question", "answers"}),  # an eval dataset (POST /v1/eval/runs)
    ("qa", {"question", "answer"}),
    ("qa", {"question", "answers"}),
    ("summarization", {"text", "summary"}),
    ("translation", {"text", "translation"}),
    ("classification", {"text", "label"}),
)


SHOWN_PROBLEMS = 100  # bad lines listed in one 422


class BadFile(ValueError):
    """Every bad line of an upload, as (line number, reason); the message names the first."""

    def __init__(self, problems: list[tuple[int, str]]) -> None:
        self.problems = problems
        line, reason = problems[0]
        more = f" (and {len(problems) - 1} more bad lines)" if len(problems) > 1 else ""
        super().__init__(f"line {line}: {reason}{more}")


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
    """(records, format) of a JSONL upload; ``BadFile`` listing every bad line."""
    found: str | None = None
    records = 0
    problems: list[tuple[int, str]] = []
    for line in jsonl.read_bytes(raw):
        if line.record is None:
            problems.append((line.number, line.problem))
            continue
        shape = next((name for name, keys in SHAPES if keys <= line.record.keys()), None)
        if shape is None:
            problems.append((line.number, f"no known format (keys {sorted(line.record)[:8]})"))
        elif found is not None and shape != found:
            problems.append((line.number, f"{shape} record in a {found} file"))
        else:
            found, records = shape, records + 1
    if found is None and not problems:
        problems.append((1, "the file holds no records"))
    if problems:
        raise BadFile(problems)
    return records, found or ""


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
    except BadFile as exc:
        details = [
            {"file": name, "line": line, "reason": reason}
            for line, reason in exc.problems[:SHOWN_PROBLEMS]
        ]
        raise ServiceError(422, "invalid_file", f"{name}: {exc}", details) from None


@router.get("")
def list_files(state: State, _: Reader) -> FilesOut:
    folder = state.settings.layout.files
    metas = sorted(folder.glob("file-*.json")) if folder.is_dir() else []
    files = [f for f in map(_read_meta, metas) if f is not None]
    return FilesOut(files=sorted(files, key=lambda f: f.created, reverse=True))


def _read_meta(path: Path) -> FileOut | None:
    """An upload's metadata; one that cannot be read is left out (and logged), never a 500."""
    try:
        return FileOut.model_validate_json(path.read_bytes())
    except (OSError, ValueError):
        log.warning("skipping unreadable upload metadata %s", path.name)
        return None

"""/v1/documents: add (one or a batch), list, get, replace and delete documents."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, UploadFile
from pydantic import BaseModel, ConfigDict, Field

from retriever.index import DocumentIn
from retriever.loaders import LoadError, load_bytes, safe_name
from service.auth import Reader, Writer
from service.deps import RetrieverDep, State
from service.errors import ServiceError

router = APIRouter(prefix="/v1/documents", tags=["documents"])


class DocumentBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(None, min_length=1, max_length=256)
    text: str = Field(min_length=1)
    metadata: dict[str, Any] = Field(default_factory=dict)


class BatchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    documents: list[DocumentBody] = Field(min_length=1)


class Written(BaseModel):
    id: str
    version: int
    status: str
    chunks: int


class DocumentOut(BaseModel):
    id: str
    version: int
    text: str
    metadata: dict[str, Any]
    created: float
    updated: float


@router.post("", status_code=201)
def add(
    body: DocumentBody | BatchBody, retriever: RetrieverDep, state: State, _: Writer
) -> dict[str, Any]:
    """Add or replace one document, or a batch ``{"documents": [...]}``."""
    docs = body.documents if isinstance(body, BatchBody) else [body]
    limit = state.settings.limits.max_batch_documents
    if len(docs) > limit:
        raise ServiceError(422, "batch_too_large", f"at most {limit} documents per request")
    results = retriever.upsert_many([DocumentIn(d.text, d.id, d.metadata) for d in docs])
    return {"documents": [Written(**r.__dict__) for r in results]}


@router.get("")
def list_documents(
    retriever: RetrieverDep, _: Reader, offset: int = 0, limit: int = 50
) -> dict[str, Any]:
    if offset < 0 or not 1 <= limit <= 500:
        raise ServiceError(422, "invalid_request", "offset >= 0 and 1 <= limit <= 500")
    rows = retriever.documents(offset, limit)
    return {
        "total": len(retriever),
        "offset": offset,
        "documents": [
            DocumentOut(**{k: getattr(r, k) for k in DocumentOut.model_fields}) for r in rows
        ],
    }


@router.get("/{doc_id:path}")
def get(doc_id: str, retriever: RetrieverDep, _: Reader) -> DocumentOut:
    r = retriever.get(doc_id)
    return DocumentOut(**{k: getattr(r, k) for k in DocumentOut.model_fields})


@router.put("/{doc_id:path}")
def replace(doc_id: str, body: DocumentBody, retriever: RetrieverDep, _: Writer) -> Written:
    if body.id not in (None, doc_id):
        raise ServiceError(422, "id_mismatch", "the body's id differs from the path's")
    return Written(**retriever.upsert(DocumentIn(body.text, doc_id, body.metadata)).__dict__)


@router.delete("/{doc_id:path}")
def delete(doc_id: str, retriever: RetrieverDep, _: Writer) -> dict[str, Any]:
    retriever.delete([doc_id])
    return {"deleted": doc_id}


@router.post("/upload", status_code=201)
async def upload(
    files: list[UploadFile], retriever: RetrieverDep, state: State, _: Writer
) -> dict[str, Any]:
    """Add files (txt, md, html, jsonl) as documents. A file's name is only ever metadata and
    an id: it never becomes a path on this machine."""
    import anyio

    limit = state.settings.limits.max_batch_documents
    docs: list[DocumentIn] = []
    failed: list[dict[str, str]] = []
    for f in files:
        name = safe_name(f.filename or "upload.txt")
        raw = await f.read()
        items = await anyio.to_thread.run_sync(load_bytes, name, raw)
        for item in items:
            if isinstance(item, LoadError):
                failed.append({"source": item.source, "reason": item.reason})
            else:
                docs.append(item)
    if len(docs) > limit:
        raise ServiceError(422, "batch_too_large", f"at most {limit} documents per request")
    results = await anyio.to_thread.run_sync(lambda: retriever.upsert_many(docs)) if docs else []
    return {"documents": [Written(**r.__dict__) for r in results], "failed": failed}

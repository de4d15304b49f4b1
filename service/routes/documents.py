"""/v1/documents: add (one or a batch), list, get, replace and delete documents.

Bodies are checked here with the index's own rules (``retriever.validation``: printable ids of
at most 256 characters, metadata at most 8 deep and 16 KiB; ``retriever.index.TEXT_MAX_CHARS``)
so a bad field is a 422 naming it (``body.batch.documents.3.metadata``). Reading and deleting
take any id a stored row may have (rows written before these rules stay reachable); POST takes
only ids valid for a new document. PUT takes any id a write may hold (``check_any_id``) and
lets the index decide the rest: a row stored before the look-alike and dot-segment rules can be
updated under its id, a new id breaking them is a 422 naming ``doc_id`` in the path.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Path, Query, UploadFile
from pydantic import AfterValidator, BaseModel, Discriminator, Field, Tag

from retriever.errors import InvalidDocument
from retriever.index import TEXT_MAX_CHARS, DocumentIn
from retriever.loaders import LoadError, load_bytes, safe_name
from retriever.validation import ID_MAX_CHARS, check_any_id, check_id
from service.auth import Reader, Writer
from service.bounds import DOCUMENTS_MAX, FILES_MAX, OFFSET_MAX, PAGE_MAX, Body, Metadata
from service.deps import RetrieverDep, State
from service.errors import ServiceError

router = APIRouter(prefix="/v1/documents", tags=["documents"])
SEARCH_MAX_CHARS = 200  # a list filter (GET /v1/documents?q=)


DocId = Annotated[
    str, Field(min_length=1, max_length=ID_MAX_CHARS), AfterValidator(lambda v: check_id(v, "id"))
]
StoredId = Annotated[str, Path(min_length=1, max_length=ID_MAX_CHARS)]  # any id a row may have
WriteId = Annotated[StoredId, AfterValidator(lambda v: check_any_id(v, "doc_id"))]


class DocumentBody(Body):
    id: DocId | None = None
    text: str = Field(min_length=1, max_length=TEXT_MAX_CHARS)
    metadata: Metadata = Field(default_factory=dict)


class BatchBody(Body):
    documents: list[DocumentBody] = Field(min_length=1, max_length=DOCUMENTS_MAX)


def _shape(value: Any) -> str:
    return "batch" if isinstance(value, dict) and "documents" in value else "document"


AddBody = Annotated[
    Annotated[DocumentBody, Tag("document")] | Annotated[BatchBody, Tag("batch")],
    Discriminator(_shape),
]


def _too_many(count: int, limit: int, field: str) -> ServiceError:
    msg = f"{field}: at most {limit} documents per request, got {count}"
    return ServiceError(422, "batch_too_large", msg, [{"loc": ["body", field], "msg": msg}])


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
def add(body: AddBody, retriever: RetrieverDep, state: State, _: Writer) -> dict[str, Any]:
    """Add or replace one document, or a batch ``{"documents": [...]}``."""
    docs = body.documents if isinstance(body, BatchBody) else [body]
    limit = state.settings.limits.max_batch_documents
    if len(docs) > limit:
        raise _too_many(len(docs), limit, "documents")
    results = retriever.upsert_many([DocumentIn(d.text, d.id, d.metadata) for d in docs])
    return {"documents": [Written(**r.__dict__) for r in results]}


@router.get("")
def list_documents(
    retriever: RetrieverDep,
    _: Reader,
    offset: Annotated[int, Query(ge=0, le=OFFSET_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 50,
    q: Annotated[str | None, Query(min_length=1, max_length=SEARCH_MAX_CHARS)] = None,
) -> dict[str, Any]:
    """A page of documents in id order; ``q`` keeps those whose id or text contains it (ASCII
    letters in any case); ``total`` counts what matches."""
    rows = retriever.documents(offset, limit, q)
    return {
        "total": retriever.count_documents(q),
        "offset": offset,
        "documents": [
            DocumentOut(**{k: getattr(r, k) for k in DocumentOut.model_fields}) for r in rows
        ],
    }


@router.get("/{doc_id:path}")
def get(doc_id: StoredId, retriever: RetrieverDep, _: Reader) -> DocumentOut:
    r = retriever.get(doc_id)
    return DocumentOut(**{k: getattr(r, k) for k in DocumentOut.model_fields})


@router.put("/{doc_id:path}")
def replace(doc_id: WriteId, body: DocumentBody, retriever: RetrieverDep, _: Writer) -> Written:
    """Replace the document stored under ``doc_id``, or add it: the id rules for a new
    document apply only when none is stored (the index decides)."""
    if body.id not in (None, doc_id):
        raise ServiceError(422, "id_mismatch", "the body's id differs from the path's")
    try:
        result = retriever.upsert(DocumentIn(body.text, doc_id, body.metadata))
    except InvalidDocument as exc:
        field, _sep, why = str(exc).partition(": ")
        if field != "id":
            raise
        msg = f"Value error, doc_id: {why}"  # as the path's own checks word a refusal
        detail = [{"loc": ["path", "doc_id"], "msg": msg}]
        raise ServiceError(422, "invalid_request", "the request is not valid", detail) from None
    return Written(**result.__dict__)


@router.delete("/{doc_id:path}")
def delete(doc_id: StoredId, retriever: RetrieverDep, _: Writer) -> dict[str, Any]:
    retriever.delete([doc_id])
    return {"deleted": doc_id}


@router.post("/upload", status_code=201)
async def upload(
    files: Annotated[list[UploadFile], File(max_length=FILES_MAX)],
    retriever: RetrieverDep,
    state: State,
    _: Writer,
) -> dict[str, Any]:
    """Add files (txt, md, html, jsonl) as documents. A file's name is only ever metadata and
    an id: it never becomes a path on this machine."""
    import anyio

    limit = state.settings.limits.max_batch_documents
    if len(files) > limit:
        raise _too_many(len(files), limit, "files")
    docs: list[DocumentIn] = []
    failed: list[dict[str, str]] = []  # a file, or a jsonl file's line ("docs.jsonl:3")
    given_by: dict[str, str] = {}  # id -> the file (file:line) that gave it first
    for f in files:
        name = safe_name(f.filename or "upload.txt")
        raw = await f.read()
        items = await anyio.to_thread.run_sync(load_bytes, name, raw, retriever.has)
        for item in items:
            if isinstance(item, LoadError):
                failed.append({"source": item.source, "reason": item.reason})
            elif item.id is not None and item.id in given_by:
                reason = f"id {item.id!r} already given by {given_by[item.id]}"
                failed.append({"source": item.where or name, "reason": reason})
            else:
                if item.id is not None:
                    given_by[item.id] = item.where or name
                docs.append(item)
    if len(docs) > limit:
        raise _too_many(len(docs), limit, "files")
    results = await anyio.to_thread.run_sync(lambda: retriever.upsert_many(docs)) if docs else []
    return {"documents": [Written(**r.__dict__) for r in results], "failed": failed}

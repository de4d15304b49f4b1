"""The service's domain error (a status, a code, a message) and the statuses the libraries'
domain exceptions map to. No web framework here: the answering pipeline raises these in the
CLI and the eval harness too; ``service.responses`` turns them into HTTP responses.
"""

from __future__ import annotations

import logging
from typing import Any

from retriever.errors import DocumentNotFound, EmbedderMismatch, InvalidDocument, InvalidSearch
from service.adapters import AdapterInUse, AdapterNotFound, AdaptersBusy, AdapterUnusable
from tuner.registry import RecordNotFound, RegistryError

log = logging.getLogger(__name__)


class ServiceError(Exception):
    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


DOMAIN: dict[type[Exception], tuple[int, str]] = {
    AdapterNotFound: (404, "adapter_not_found"),
    AdaptersBusy: (503, "adapters_busy"),
    AdapterInUse: (409, "adapter_in_use"),
    AdapterUnusable: (409, "adapter_unusable"),
    RecordNotFound: (404, "adapter_not_found"),
    RegistryError: (409, "adapter_refused"),
    DocumentNotFound: (404, "document_not_found"),
    InvalidDocument: (422, "invalid_document"),
    InvalidSearch: (422, "invalid_search"),
    EmbedderMismatch: (409, "embedder_mismatch"),
}

"""Domain errors of the retriever; the service maps them to HTTP, the CLI to one-line exits."""


class RetrieverError(Exception):
    """Base class."""


class DocumentNotFound(RetrieverError):
    def __init__(self, doc_id: str) -> None:
        super().__init__(f"document {doc_id!r} not found")
        self.doc_id = doc_id


class InvalidDocument(RetrieverError):
    """A document is malformed (empty text, bad id, metadata not JSON)."""


class EmbedderMismatch(RetrieverError):
    """The index was built by another embedder than the one given to open it."""

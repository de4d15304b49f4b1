"""Domain errors of the retriever; the service maps them to HTTP, the CLI to one-line exits."""


class RetrieverError(Exception):
    """Base class."""


class DocumentNotFound(RetrieverError):
    def __init__(self, doc_id: str) -> None:
        super().__init__(f"document {doc_id!r} not found")
        self.doc_id = doc_id


class InvalidDocument(RetrieverError):
    """A document is malformed (empty or oversized text, bad id, metadata out of bounds); the
    message starts with the field's path (``documents[2].metadata.a``)."""


class InvalidSearch(RetrieverError, ValueError):
    """A search is malformed (bad filters, mode or k); the message starts with the field."""


class EmbedderMismatch(RetrieverError):
    """The index was built by another embedder than the one given to open it."""

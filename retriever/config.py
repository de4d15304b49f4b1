"""Retriever configuration: chunking, fusion and search defaults, validated on creation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

# Retrieval modes: dense vectors, sparse BM25, or "hybrid", their fusion. Not the answering
# modes (base, rag, ft, hybrid: service.pipeline), whose "hybrid" means RAG plus an adapter.
SearchMode = Literal["dense", "sparse", "hybrid"]
SEARCH_MODES: tuple[str, ...] = get_args(SearchMode)
FUSIONS = ("rrf", "weighted")


@dataclass
class RetrieverConfig:
    chunk_size: int = 600  # characters per chunk (Chinese has no spaces: characters, not words)
    chunk_overlap: int = 80  # characters shared by neighbouring chunks
    fusion: str = "weighted"  # how hybrid mode merges dense and sparse: weighted | rrf
    dense_weight: float = 0.5  # weight of the dense list in fusion (sparse gets 1 - this)
    # dense weight for queries in a script the embedder was not trained on (Chinese text with an
    # English-only embedder): its vectors are weak there, so BM25 leads
    foreign_dense_weight: float = 0.2
    rrf_k: int = 60  # reciprocal-rank constant
    candidates: int = 50  # per-list depth fetched before fusion and filtering
    # flat (exact, deletes in place) | hnsw (tombstones + rebuild) | a name registered with
    # retriever.lcvectors.register_vectorstore (a LangChain vector store)
    vector_index: str = "flat"
    snapshot_every: int = 2000  # write a vector-index snapshot after this many chunk changes
    # process: acknowledged writes survive a crash or kill -9 (SQLite WAL, synchronous=NORMAL);
    # power: also a power loss or OS crash (synchronous=FULL, an fsync per write)
    durability: str = "process"

    def __post_init__(self) -> None:
        if self.chunk_size < 50:
            raise ValueError(f"chunk_size must be >= 50, got {self.chunk_size}")
        if not 0 <= self.chunk_overlap < self.chunk_size:
            raise ValueError(f"chunk_overlap must be in [0, chunk_size), got {self.chunk_overlap}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        for name in ("dense_weight", "foreign_dense_weight"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        from retriever.vectors import BACKENDS  # here: the registry comes with faiss

        if self.vector_index not in BACKENDS:
            raise ValueError(
                f"vector_index must be one of {sorted(BACKENDS)}, got {self.vector_index!r} "
                "(another store is registered with retriever.lcvectors.register_vectorstore)"
            )
        if self.durability not in ("process", "power"):
            raise ValueError(f"durability must be process or power, got {self.durability!r}")
        if self.snapshot_every < 1:
            raise ValueError(f"snapshot_every must be >= 1, got {self.snapshot_every}")
        if self.rrf_k < 1 or self.candidates < 1:
            raise ValueError("rrf_k and candidates must be >= 1")

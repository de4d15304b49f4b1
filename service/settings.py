"""Service settings in one place: environment (``RAGTUNE_*``), an optional YAML file, defaults.

Precedence, highest first: values passed in code, environment variables, the YAML file named by
``RAGTUNE_CONFIG`` (or ``ragtune --config FILE``), the defaults below. Nested values use ``__``
in the environment (``RAGTUNE_LIMITS__MAX_K=20``). API keys are hashed as soon as they are read;
the plain key is never kept. Libraries never see this class: the service maps it onto their
dataclass configs.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from tuner.layout import DataLayout

CONFIG_ENV = "RAGTUNE_CONFIG"
Scope = Literal["read", "write", "admin"]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKey(BaseModel):
    """One API key: give ``key`` (hashed on load) or its ``sha256``, and its scopes."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="who holds the key; shown in logs and metrics")
    key: SecretStr | None = Field(default=None, description="the key itself; hashed on load")
    sha256: str | None = Field(default=None, description="hex sha256 of the key, instead of key")
    scopes: list[Scope] = Field(default_factory=lambda: ["read"], description="read, write, admin")  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _hash(self) -> ApiKey:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError(f"api key {self.name!r}: give exactly one of key or sha256")
        if self.key is not None:
            secret = self.key.get_secret_value()
            if len(secret) < 16:
                raise ValueError(f"api key {self.name!r}: key must be at least 16 characters")
            self.sha256 = hash_key(secret)
            self.key = None
        elif len(self.sha256 or "") != 64:
            raise ValueError(f"api key {self.name!r}: sha256 must be 64 hex characters")
        return self


class Limits(BaseModel):
    """Bounds on what one request may ask for."""

    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(10 * 2**20, gt=0, description="largest request body (413 above)")
    max_k: int = Field(50, gt=0, description="most passages a search or query may return")
    max_new_tokens: int = Field(512, gt=0, description="cap on generated tokens per request")
    max_batch_documents: int = Field(256, gt=0, description="most documents in one batch add")
    max_batch_generation: int = Field(16, gt=0, description="requests decoded together")
    max_question_chars: int = Field(4000, gt=0, description="longest question or chat message")
    max_messages: int = Field(64, gt=0, description="most messages in one chat request")
    max_prompt_tokens: int = Field(
        2048,
        gt=0,
        description="per-request budget for the templated prompt, in tokens; passages are "
        "trimmed or dropped to fit, user text over it gets 422 (the model's context also bounds "
        "prompt + answer)",
    )
    max_loaded_adapters: int = Field(
        8, gt=0, description="adapters held loaded at once; least recently used unloaded first"
    )
    rate_limit_per_minute: int | None = Field(
        None,
        ge=0,
        description="requests per key per minute; 0 = off; unset = 120 with auth on, off with "
        "auth off (one local user on loopback)",
    )
    failed_auth_per_minute: int = Field(
        10, ge=0, description="failed key attempts per client address per minute; 0 = off"
    )

    def requests_per_minute(self, auth_disabled: bool) -> int:
        """The per-key rate limit in force: the setting, or its default for the auth mode."""
        if self.rate_limit_per_minute is not None:
            return self.rate_limit_per_minute
        return 0 if auth_disabled else 120


class AnswerLogSettings(BaseModel):
    """The record of each answer that feedback refers to (service.answerlog)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="keep a record of every answer (never API keys)")
    retention_days: int = Field(
        30, ge=0, le=36_500, description="days a record is kept; 0 = keep them all"
    )


class Database(BaseModel):
    """Where the index lives when it is not the embedded one: PostgreSQL + pgvector
    (retriever.postgres). Unset ``url``: the embedded SQLite + FAISS index under the data dir."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        None,
        description="PostgreSQL URL (postgresql://user:pass@host/db, or ?host=/socket/dir); "
        "needs ragtune[pg] and the pgvector extension",
    )
    schema_name: str = Field(
        "ragtune", pattern=r"^[a-z_][a-z0-9_]{0,62}$", description="the schema of ragtune's tables"
    )
    pool_size: int = Field(8, ge=1, le=256, description="connections per process")
    exact_search: bool = Field(
        False, description="dense search by a full scan instead of the HNSW index"
    )
    ef_search: int = Field(
        100, ge=1, le=1000, description="HNSW candidates per dense search (pgvector hnsw.ef_search)"
    )
    job_lease_s: float = Field(
        12.0,
        ge=2.0,
        le=600.0,
        description="seconds a replica may go silent before another takes over its tuning jobs "
        "and eval runs (resuming them from their last checkpoint)",
    )


class Retrieval(BaseModel):
    """Chunking, fusion and the vector index (see retriever.config.RetrieverConfig)."""

    model_config = ConfigDict(extra="forbid")

    chunk_size: int = Field(600, ge=50, description="characters per chunk")
    chunk_overlap: int = Field(80, ge=0, description="characters shared by neighbouring chunks")
    fusion: Literal["rrf", "weighted"] = Field("weighted", description="hybrid fusion method")
    dense_weight: float = Field(0.5, ge=0, le=1, description="dense share of the hybrid score")
    foreign_dense_weight: float = Field(
        0.2, ge=0, le=1, description="dense share for queries the embedder's languages miss"
    )
    vector_index: str = Field(
        "flat",
        description="the embedded index's vector backend: flat or hnsw (FAISS), or one a module "
        "of vector_modules registered (a LangChain VectorStore: docs/retriever.md)",
    )
    vector_modules: list[str] = Field(
        default_factory=list,
        description="Python modules imported before the index opens; each may register a vector "
        "backend (retriever.lcvectors.register_vectorstore)",
    )
    durability: Literal["process", "power"] = Field(
        "process", description="process: writes survive kill -9; power: also power loss (fsync)"
    )
    candidates: int = Field(50, ge=1, description="per-list depth before fusion")
    reranker: str | None = Field(None, description="cross-encoder folder or hub id; unset = none")
    fit_fusion: bool = Field(
        True,
        description="fit the hybrid dense share per query language on pseudo-queries from the "
        "index's own chunks, in the background, whenever the index has changed by a quarter",
    )
    reembed_old_index: bool = Field(
        True,
        description="at startup, re-embed in the background an index whose chunks were embedded "
        "without their title and section (searches go on meanwhile)",
    )
    embedding_backend: Literal["torch", "onnx", "onnx-int8", "openvino", "openvino-int8"] = Field(
        "torch",
        description="what runs the embedder: torch, or an export made once under models_dir, run "
        "by onnxruntime (onnx, onnx-int8; needs ragtune[onnx]) or OpenVINO (openvino, "
        "openvino-int8; needs ragtune[openvino]); vectors differ, so switching re-embeds the index",
    )

    @model_validator(mode="after")
    def _known_vector_index(self) -> Retrieval:
        import importlib

        for name in self.vector_modules:
            try:
                importlib.import_module(name)
            except ImportError as exc:
                raise ValueError(
                    f"retrieval.vector_modules: cannot import {name!r} ({exc})"
                ) from None
        from retriever.vectors import BACKENDS

        if self.vector_index not in BACKENDS:
            raise ValueError(
                f"retrieval.vector_index: one of {sorted(BACKENDS)}, got {self.vector_index!r}"
                " (a module in retrieval.vector_modules registers others)"
            )
        return self


class Settings(BaseSettings):
    """Everything the service can be configured with."""

    model_config = SettingsConfigDict(
        env_prefix="RAGTUNE_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    data_dir: Path = Field(
        default_factory=lambda: Path.home() / ".local" / "share" / "ragtune",
        description="index, documents, converted models, adapters and runs live here",
    )
    models_dir: Path | None = Field(
        None, description="converted model weights; unset = DATA_DIR/models"
    )
    embedder: str = Field("all-MiniLM-L6-v2", description="embedder preset, hub id or folder")
    embedder_path: Path | None = Field(None, description="explicit local weights for the embedder")
    generator: str = Field(
        "SmolLM2-135M-Instruct", description="generator preset, hub id or folder"
    )
    generator_path: Path | None = Field(
        None, description="explicit local weights (folder or .gguf)"
    )
    generator_precision: Literal["fp32", "int4"] = Field(
        "fp32",
        description="serving weights of the generator's linear layers: fp32, or int4 (CPU only; "
        "4-bit groups of 32, the codes exact for a Q4_1 GGUF; adapters keep their own precision)",
    )
    device: str = Field("cpu", description="cpu, cuda, cuda:N or auto")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; unset = all cores")
    decode_threads: int | None = Field(
        None,
        ge=1,
        description="torch CPU threads of a generation decode step; unset = timed per batch "
        "size (1 or threads, whichever decodes faster here); prefills use threads",
    )
    offline: bool | None = Field(
        None, description="never try the hub; unset = follow HF_HUB_OFFLINE"
    )
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(8000, ge=1, le=65535, description="port to bind")
    api_keys: list[ApiKey] = Field(default_factory=list, description="keys and their scopes")
    auth_disabled: bool = Field(False, description="serve without keys (loopback only)")
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="browser origins (scheme://host[:port]) allowed to send state-changing "
        "requests with auth on; none by default",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="reverse proxies (addresses) whose X-Forwarded-For names the client; none "
        "by default: the socket's peer is the client (per-address limits key on it)",
    )
    api_docs: bool = Field(
        False, description="serve the interactive API docs at /docs (they load assets from a CDN)"
    )
    limits: Limits = Field(default_factory=Limits)
    retrieval: Retrieval = Field(default_factory=Retrieval)
    database: Database = Field(default_factory=Database)
    answer_log: AnswerLogSettings = Field(default_factory=AnswerLogSettings)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("cpu", "cuda", "auto") and not (v.startswith("cuda:") and v[5:].isdigit()):
            raise ValueError(f"device must be cpu, cuda, cuda:N or auto, got {v!r}")
        return v

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        """``scheme://host[:port]`` as browsers send it: lower case, no trailing slash."""
        out = []
        for origin in v:
            normal = origin.strip().lower().rstrip("/")
            scheme, sep, rest = normal.partition("://")
            if scheme not in ("http", "https") or not sep or not rest or "/" in rest:
                raise ValueError(f"allowed_origins: {origin!r} is not scheme://host[:port]")
            out.append(normal)
        return out

    @field_validator("data_dir", "models_dir", "embedder_path", "generator_path")
    @classmethod
    def _expand(cls, v: Path | None) -> Path | None:
        """``~`` expanded and made absolute: a relative folder would be matched as a word when
        server paths are hidden from clients."""
        return v.expanduser().resolve() if v is not None else None

    @property
    def layout(self) -> DataLayout:
        """What lives where under the data dir (adapters, files, jobs, evals, index)."""
        return DataLayout(self.data_dir)

    @property
    def index_dir(self) -> Path:
        """The document index: SQLite store and vector snapshots."""
        return self.layout.index

    @property
    def model_cache(self) -> Path:
        """Where converted model weights live (GGUF dequantised to safetensors)."""
        return self.models_dir or self.layout.models

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_ENV)
        if config_file:
            path = Path(config_file).expanduser()
            if not path.is_file():
                raise ValueError(f"{CONFIG_ENV}={config_file}: no such file")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    def masked(self) -> dict[str, Any]:
        """The effective configuration as plain data, with secrets masked."""
        data = self.model_dump(mode="json")
        data["models_dir"] = str(self.model_cache)
        data["api_keys"] = [
            {"name": k.name, "sha256": f"{(k.sha256 or '')[:8]}…", "scopes": k.scopes}
            for k in self.api_keys
        ]
        data["config_file"] = os.environ.get(CONFIG_ENV)
        return data


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings; tests override the dependency or call ``cache_clear``."""
    return Settings()

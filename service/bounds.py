"""The hard bounds on every request field, and the pydantic types the routes declare them with.

Each number lives once. Document ids, metadata and filters are bounded in
``retriever.validation``; registry ids and names in ``tuner.registry``; uploaded file ids in
``tuner.prepare``; tuning recipes (hyperparameters, synthetic data, retriever mining) in
``tuner.config``, whose tables ``edge_model`` turns into request models; everything else here.
A value past a bound is a 422 naming the field before the route runs. Some bounds are ceilings
that a setting tightens (``service.settings.Limits``: ``max_k``, ``max_new_tokens``,
``max_question_chars``, ``max_messages``, ``max_batch_documents``); the route or the pipeline
checks the setting. ``docs/api.md`` has the table. Knows nothing of routes or of HTTP.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    create_model,
)

from retriever.validation import (
    FILTER_MAX_KEYS,
    FILTER_MAX_STRING_CHARS,
    FILTER_MAX_VALUES,
    INT_BOUND,
    METADATA_MAX_BYTES,
    METADATA_MAX_DEPTH,
    METADATA_MAX_KEY_CHARS,
    check_filters,
    check_metadata,
)
from tuner import prepare, registry

SAMPLING_SEED_MIN = -(2**63)  # a signed 64-bit integer: OpenAI clients may send a negative one,
SAMPLING_SEED_MAX = 2**63 - 1  # and the engine (torch's generator) takes any
BOOTSTRAP_SEED_MAX = 2**63 - 1  # an eval run's seed (numpy's generator: never negative)
K_MAX = 1000  # passages one search or answer may ask for; Limits.max_k tightens it (50)
NEW_TOKENS_MAX = 32_768  # answer length; Limits.max_new_tokens tightens it (512)
QUESTION_MAX_CHARS = 100_000  # a question, a query, a chat message; Limits.max_question_chars
MESSAGES_MAX = 1024  # chat messages; Limits.max_messages tightens it (64)
STOP_MAX = 4  # stop strings, as OpenAI allows
STOP_MAX_CHARS = 64
TEMPERATURE_MAX = 2.0
MODEL_MAX_CHARS = 4096  # a model: a preset, a hub id or a local folder (PATH_MAX)
OFFSET_MAX = 10**9  # rows skipped by a list page
PAGE_MAX = 500  # rows in one list page
DOCUMENTS_MAX = 10_000  # documents in one batch; Limits.max_batch_documents tightens it (256)
FILES_MAX = 500  # files in one upload (the multipart parser refuses 1000 parts with a 400)
EVAL_QUESTIONS_MAX = 1_000_000  # an eval run's ``limit``
RESAMPLES_MIN = 100  # bootstrap resamples of an eval run: fewer make the intervals meaningless,
RESAMPLES_MAX = 100_000  # more cost time out of proportion (each interval redraws them all)

Seed = Annotated[int, Field(ge=SAMPLING_SEED_MIN, le=SAMPLING_SEED_MAX)]
BootstrapSeed = Annotated[int, Field(ge=0, le=BOOTSTRAP_SEED_MAX)]
K = Annotated[int, Field(ge=1, le=K_MAX)]
NewTokens = Annotated[int, Field(ge=1, le=NEW_TOKENS_MAX)]
Text = Annotated[str, Field(min_length=1, max_length=QUESTION_MAX_CHARS)]
Offset = Annotated[int, Field(ge=0, le=OFFSET_MAX)]
PageLimit = Annotated[int, Field(ge=1, le=PAGE_MAX)]
# registry ids, registry names and uploaded file ids: the rules tuner.registry and tuner.prepare
# check, so what the edge lets through the tuner takes
AdapterId = Annotated[
    str, Field(min_length=1, max_length=registry.FOLDER_MAX_CHARS, pattern=registry.FOLDER.pattern)
]
RegistryName = Annotated[
    str, Field(min_length=1, max_length=registry.NAME_MAX_CHARS, pattern=registry.NAME.pattern)
]
FileId = Annotated[
    str, Field(min_length=1, max_length=prepare.FILE_ID_MAX_CHARS, pattern=prepare.FILE_ID.pattern)
]
ModelName = Annotated[str, Field(min_length=1, max_length=MODEL_MAX_CHARS)]
StopString = Annotated[str, Field(min_length=1, max_length=STOP_MAX_CHARS)]
StopList = StopString | Annotated[list[StopString], Field(max_length=STOP_MAX)]

_SCALAR_SCHEMA: list[dict[str, Any]] = [
    {"type": "string", "maxLength": FILTER_MAX_STRING_CHARS},
    {"type": "integer", "minimum": -INT_BOUND, "maximum": INT_BOUND - 1},
    {"type": "number", "maximum": 1.7976931348623157e308},
    {"type": "boolean"},
    {"type": "null"},
]
FILTERS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "maxProperties": FILTER_MAX_KEYS,
    "propertyNames": {"maxLength": METADATA_MAX_KEY_CHARS},
    "additionalProperties": {
        "anyOf": [
            *_SCALAR_SCHEMA,
            {"type": "array", "maxItems": FILTER_MAX_VALUES, "items": {"anyOf": _SCALAR_SCHEMA}},
        ]
    },
    "description": "metadata key -> a scalar, or a list of scalars (any of them matches)",
}
Filters = Annotated[
    dict[str, Any] | None,
    AfterValidator(lambda value: check_filters(value, "filters")),
    WithJsonSchema({"anyOf": [FILTERS_SCHEMA, {"type": "null"}]}),
]

# JSON Schema cannot say "16 KiB as JSON": the size and depth go in x- keys the bounds test reads
METADATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "x-max-bytes": METADATA_MAX_BYTES,
    "x-max-depth": METADATA_MAX_DEPTH,
    "propertyNames": {"maxLength": METADATA_MAX_KEY_CHARS},
    "description": f"JSON, at most {METADATA_MAX_BYTES} bytes and {METADATA_MAX_DEPTH} deep",
}
Metadata = Annotated[
    dict[str, Any],
    AfterValidator(lambda value: check_metadata(value, "metadata")),
    WithJsonSchema(METADATA_SCHEMA),
]


class Body(BaseModel):
    """A request body: unknown fields refused (a typo is not silently dropped) and JSON types
    taken as sent (pydantic's strict mode): ``true`` or ``"3"`` is not a number, ``"yes"`` not a
    boolean, ``3.5`` not an integer; an integer is still a fine float."""

    model_config = ConfigDict(extra="forbid", strict=True)


def one_of(values: Sequence[str]) -> Any:
    """A string that must be one of ``values`` (an enum in the schema, 422 naming the field)."""

    def check(value: str) -> str:
        if value not in values:
            raise ValueError(f"one of {', '.join(values)}; got {value!r}")
        return value

    return Annotated[str, AfterValidator(check), WithJsonSchema({"enum": list(values)})]


def edge_model(
    cls: type,
    bounds: Mapping[str, Mapping[str, float]],
    types: Mapping[str, Any] | None = None,
) -> type[BaseModel]:
    """A request model of dataclass ``cls`` (unknown fields refused): each field its type (or
    ``types[name]``), its default, and its ``bounds[name]`` (pydantic's ``ge``/``gt``/``le``/
    ``lt``: the same table ``cls.__post_init__`` checks). Dump it with ``exclude_unset``."""
    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        default: Any = None if f.default is dataclasses.MISSING else f.default
        annotation = (types or {}).get(f.name, hints[f.name])
        if typing.get_origin(annotation) is tuple:  # JSON has arrays only: a list is the tuple
            annotation = Annotated[annotation, BeforeValidator(_tuple)]
        fields[f.name] = (annotation, Field(default, **bounds.get(f.name, {})))  # type: ignore[call-overload]
    config = ConfigDict(extra="forbid", strict=True)  # as ``Body``
    model: type[BaseModel] = create_model(cls.__name__ + "Body", __config__=config, **fields)
    return model


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value

"""The answering pipeline: a question, an answering mode and options in; checked limits, the
retrieved passages, the grounded prompt, the generation request and the cited answer out.

Every answer goes through here: ``POST /v1/query``, ``POST /v1/chat/completions``, the
in-process ``ragtune ask`` and the eval harness's generation. The answering modes are described
once (``MODES``): rag and hybrid retrieve, ft and hybrid run a fine-tuned adapter. The limit
checks are written once (``check``), each caller naming its own fields (``Surface``).

It knows nothing of HTTP (callers format the response) nor of how the engine batches, how the
index searches or how an adapter is stored. Its errors are ``ServiceError`` with a status and a
code; the app maps them to responses, the CLI to one-line exits.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from service.errors import ServiceError
from tuner.prompts import rag_messages

if TYPE_CHECKING:
    from retriever.index import Hit, Retriever
    from retriever.rerank import Reranker
    from service.adapters import AdapterSet
    from service.generation.engine import GenerationEngine, GenerationRequest
    from service.settings import Limits
    from tuner.registry import Registry

Messages = list[dict[str, str]]
AnswerModeName = Literal["base", "rag", "ft", "hybrid"]


@dataclass(frozen=True)
class AnswerMode:
    """How a mode answers: with retrieved passages in the prompt, with a fine-tuned adapter."""

    name: str
    retrieves: bool
    uses_adapter: bool


MODES: dict[str, AnswerMode] = {
    m.name: m
    for m in (
        AnswerMode("base", retrieves=False, uses_adapter=False),
        AnswerMode("rag", retrieves=True, uses_adapter=False),
        AnswerMode("ft", retrieves=False, uses_adapter=True),
        AnswerMode("hybrid", retrieves=True, uses_adapter=True),
    )
}
RETRIEVING_MODES = tuple(m.name for m in MODES.values() if m.retrieves)
ADAPTER_MODES = tuple(m.name for m in MODES.values() if m.uses_adapter)


def answer_mode(name: str) -> AnswerMode:
    try:
        return MODES[name]
    except KeyError:
        raise ValueError(f"mode must be one of {tuple(MODES)}, got {name!r}") from None


def mode_for(retrieves: bool, adapter: str | None) -> str:
    """The mode that retrieves (or not) and runs ``adapter`` (or the base model)."""
    return next(
        m.name
        for m in MODES.values()
        if m.retrieves == retrieves and m.uses_adapter == (adapter is not None)
    )


@dataclass(frozen=True)
class Surface:
    """How one caller names the limited fields in its errors, and its default answer length."""

    max_new_field: str = "max_new_tokens"
    text_field: str = "question"
    default_max_new: int = 128
    per: str = ""  # what the text limit applies to, e.g. " per message"
    k_always: bool = True  # check k even when the mode does not retrieve


QUERY = Surface()
CHAT = Surface("max_tokens", "message", 256, " per message", k_always=False)


@dataclass
class Ask:
    """A question and how to answer it. ``messages`` is the chat (a query is one user message);
    the last user message is what retrieval searches for."""

    messages: Messages
    mode: str = "rag"
    k: int = 4
    search: str = "hybrid"  # the retrieval mode: dense, sparse or hybrid (fusion)
    filters: dict[str, Any] | None = None
    adapter: str | None = None
    max_new_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    temperature: float = 0.0
    seed: int | None = None

    @classmethod
    def question(cls, text: str, **options: Any) -> Ask:
        return cls([{"role": "user", "content": text}], **options)

    @property
    def query(self) -> str | None:
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), None)


@dataclass
class Prepared:
    """An ask made ready for the engine: its mode, adapter, passages and prompt."""

    ask: Ask
    mode: AnswerMode
    adapter: str | None
    hits: list[Hit]
    prompt: Messages
    max_new_tokens: int
    retrieve_s: float = 0.0


@dataclass
class Answer:
    """A prepared ask in the engine: its request streams the text; the rest says what it cites."""

    prepared: Prepared
    request: GenerationRequest
    submitted_at: float

    @property
    def text(self) -> str:
        return self.request.text.strip()

    @property
    def hits(self) -> list[Hit]:
        return self.prepared.hits

    def citations(self, with_metadata: bool = False) -> list[dict[str, Any]]:
        return [citation(h, with_metadata) for h in self.prepared.hits]

    def usage(self) -> dict[str, int]:
        prompt, completion = len(self.request.prompt_ids), len(self.request.tokens)
        return {"prompt_tokens": prompt, "completion_tokens": completion}

    def timings(self) -> dict[str, float]:
        return {
            "retrieve_s": round(self.prepared.retrieve_s, 4),
            "generate_s": round(time.perf_counter() - self.submitted_at, 4),
        }


def citation(h: Hit, with_metadata: bool = True) -> dict[str, Any]:
    """A passage as the API shows it (search results, citations)."""
    out = {
        "doc_id": h.doc_id,
        "chunk_id": h.chunk_id,
        "start": h.start,
        "end": h.end,
        "score": h.score,
        "text": h.text,
    }
    if with_metadata:
        out["metadata"] = h.metadata
    return out


def check(limits: Limits, ask: Ask, surface: Surface = QUERY) -> int:
    """Raise a 422 for an ask over the limits; return its answer length in tokens."""
    max_new = ask.max_new_tokens or min(surface.default_max_new, limits.max_new_tokens)
    if max_new > limits.max_new_tokens:
        name = surface.max_new_field
        raise ServiceError(422, f"{name}_too_large", f"{name} must be <= {limits.max_new_tokens}")
    if surface.k_always or (answer_mode(ask.mode).retrieves and ask.query):
        check_k(limits, ask.k)
    if any(len(m["content"]) > limits.max_question_chars for m in ask.messages):
        raise ServiceError(
            422,
            f"{surface.text_field}_too_long",
            f"at most {limits.max_question_chars} characters{surface.per}",
        )
    return max_new


def check_k(limits: Limits, k: int) -> None:
    """Raise a 422 for more passages than a search may return (every retrieval)."""
    if k > limits.max_k:
        raise ServiceError(422, "k_too_large", f"k must be <= {limits.max_k}")


def check_search(limits: Limits, k: int, query: str) -> None:
    """Raise a 422 for a search over the limits (``POST /v1/search``)."""
    check_k(limits, k)
    if len(query) > limits.max_question_chars:
        raise ServiceError(
            422, "question_too_long", f"at most {limits.max_question_chars} characters"
        )


def prompt(mode: AnswerMode, messages: Messages, hits: Sequence[Hit]) -> Messages:
    """The chat the model sees: retrieving modes put the passages in front as a fenced system
    message (the caller's own system messages first); other modes see the chat as it is."""
    question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    if not mode.retrieves or not question:
        return list(messages)
    grounded = rag_messages(question, hits)[0]
    own_system = [m for m in messages if m["role"] == "system"]
    rest = [m for m in messages if m["role"] != "system"]
    if own_system:
        joined = "\n\n".join(m["content"] for m in own_system)
        grounded = {"role": "system", "content": joined + "\n\n" + grounded["content"]}
    return [grounded, *rest]


class AdapterChoice:
    """Which adapter a request runs with: the one named (it must be loaded); for ft and
    hybrid without one, the promoted adapter (loaded on first use), else the only one loaded;
    base and rag run on the base model unless one is named."""

    def __init__(
        self, adapters: AdapterSet | None, registry: Registry, on_load: Any = None
    ) -> None:
        self.adapters, self.registry, self.on_load = adapters, registry, on_load

    def loaded(self) -> list[str]:
        return [str(a) for a in self.adapters.loaded()] if self.adapters is not None else []

    def pick(self, mode: AnswerMode, adapter: str | None) -> str | None:
        loaded = self.loaded()
        if adapter is not None:
            if adapter not in loaded:
                raise ServiceError(
                    404,
                    "adapter_not_found",
                    f"adapter {adapter!r} is not loaded; "
                    "see GET /v1/adapters and POST /v1/adapters/{name}/load",
                )
            return adapter
        if not mode.uses_adapter:
            return None
        promoted = self.promoted()
        if promoted is not None:
            if promoted not in loaded:
                self._load(promoted)
            return promoted
        if len(loaded) == 1:
            return loaded[0]
        raise _no_adapter(mode.name, loaded)

    def promoted(self) -> str | None:
        if self.adapters is None:
            return None
        record = self.registry.promoted()
        return None if record is None or not record.servable else str(record.id)

    def _load(self, name: str) -> None:
        assert self.adapters is not None
        self.adapters.load(name)
        if self.on_load is not None:
            self.on_load(len(self.adapters.loaded()))


def _no_adapter(mode: str, loaded: list[str]) -> ServiceError:
    if not loaded:
        return ServiceError(
            409,
            "no_adapter",
            f"mode {mode!r} needs a fine-tuned adapter and "
            "none is loaded or promoted: train one with 'ragtune tune' (or POST /v1/tune/jobs), "
            "then promote it (POST /v1/adapters/{id}/promote) or load it "
            "(POST /v1/adapters/{id}/load), or use mode rag or base",
        )
    return ServiceError(
        409,
        "adapter_required",
        f"several adapters are loaded ({loaded}) and none is promoted; name one with 'adapter'",
    )


class Pipeline:
    """check -> pick the adapter -> retrieve -> prompt -> submit to the engine.

    ``engine`` may be None until ``submit`` (the CLI closes the index before it loads the
    generator); ``retriever`` may be None when no mode that retrieves is asked for."""

    def __init__(
        self,
        limits: Limits,
        *,
        engine: GenerationEngine | None = None,
        retriever: Retriever | None = None,
        reranker: Reranker | None = None,
        adapters: AdapterChoice | None = None,
    ) -> None:
        self.limits, self.engine, self.retriever = limits, engine, retriever
        self.reranker, self.adapters = reranker, adapters

    def prepare(self, ask: Ask, surface: Surface = QUERY) -> Prepared:
        """Check ``ask``, choose its adapter, retrieve its passages and build its prompt."""
        max_new = check(self.limits, ask, surface)
        mode = answer_mode(ask.mode)
        adapter = self._adapter(mode, ask.adapter)
        t0 = time.perf_counter()
        hits = self.search(ask) if mode.retrieves and ask.query else []
        seconds = time.perf_counter() - t0 if mode.retrieves else 0.0
        return Prepared(
            ask, mode, adapter, hits, prompt(mode, ask.messages, hits), max_new, seconds
        )

    async def aprepare(self, ask: Ask, surface: Surface = QUERY) -> Prepared:
        """``prepare`` with retrieval in a worker thread (the event loop keeps serving)."""
        import anyio

        return await anyio.to_thread.run_sync(self.prepare, ask, surface)

    def search(self, ask: Ask) -> list[Hit]:
        if self.retriever is None:
            raise ValueError("this pipeline has no index to retrieve from")
        hits = self.retriever.search(ask.query or "", ask.k, ask.search, ask.filters, self.reranker)
        return list(hits)

    def submit(self, prepared: Prepared) -> Answer:
        """Queue the prepared ask on the engine; the answer's request streams its text."""
        if self.engine is None:
            raise ValueError("this pipeline has no engine to generate with")
        ask = prepared.ask
        request = self.engine.submit(
            prepared.prompt,
            prepared.max_new_tokens,
            stop=ask.stop,
            temperature=ask.temperature,
            seed=ask.seed,
            adapter=prepared.adapter,
        )
        return Answer(prepared, request, time.perf_counter())

    def given(
        self, ask: Ask, hits: Sequence[Hit], adapter: str | None, max_new_tokens: int
    ) -> Prepared:
        """A prepared ask whose passages and adapter the caller chose (the eval harness
        retrieves once per question and names each mode's adapter); no limits apply."""
        mode = answer_mode(ask.mode)
        shown = list(hits) if mode.retrieves else []
        return Prepared(
            ask, mode, adapter, shown, prompt(mode, ask.messages, shown), max_new_tokens
        )

    def _adapter(self, mode: AnswerMode, adapter: str | None) -> str | None:
        if self.adapters is None:
            if adapter is not None or mode.uses_adapter:
                raise _no_adapter(mode.name, [])
            return None
        return self.adapters.pick(mode, adapter)

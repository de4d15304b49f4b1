"""The answering pipeline: a question, an answering mode and options in; checked limits, the
retrieved passages, the grounded prompt, the generation request and the cited answer out.

Every answer goes through here: ``POST /v1/query``, ``POST /v1/chat/completions``, the
in-process ``ragtune ask`` and the eval harness's generation. The answering modes are described
once (``MODES``): rag and hybrid retrieve, ft and hybrid run a fine-tuned adapter. The limit
checks are written once (``check``), each caller naming its own fields (``Surface``). The prompt
is fitted to the token budget (``service.budget``): passages that do not fit are dropped or cut
short, and the citations name only what the prompt held. A named adapter in the registry is
loaded on first use (``AdapterChoice``).

It knows nothing of HTTP (callers format the response) nor of how the engine batches, how the
index searches or how an adapter is stored. Its errors are ``ServiceError`` with a status and a
code; the app maps them to responses, the CLI to one-line exits.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from service.adapters import AdaptersBusy
from service.budget import Budget, PromptTooLong, context_length, fit
from service.errors import ServiceError
from tuner.prompts import rag_messages
from tuner.registry import RecordNotFound

if TYPE_CHECKING:
    from retriever.index import Hit, Retriever
    from retriever.rerank import Reranker
    from service.adapters import AdapterSet, Use
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
    prompt_field: str = "question"  # what a prompt over the token budget is blamed on


QUERY = Surface()
CHAT = Surface(
    "max_tokens", "message", 256, " per message", k_always=False, prompt_field="messages"
)


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


@dataclass(eq=False)
class Prepared:
    """An ask made ready for the engine: its mode, adapter, passages and prompt. ``fitted``
    once the prompt is fitted to the token budget (``hits`` are then the passages it holds);
    ``use`` holds the adapter loaded until the answer is generated."""

    ask: Ask
    mode: AnswerMode
    adapter: str | None
    hits: list[Hit]
    prompt: Messages
    max_new_tokens: int
    retrieve_s: float = 0.0
    surface: Surface = QUERY
    fitted: bool = False
    use: Use | None = None


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
    if len(ask.messages) > limits.max_messages:
        raise ServiceError(
            422,
            "messages_too_many",
            f"messages: at most {limits.max_messages} messages, got {len(ask.messages)}",
        )
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
    """Which adapter a request runs with: the one named; for ft and hybrid without one, the
    promoted adapter, else the only one loaded; base and rag run on the base model unless one
    is named. An adapter the registry holds is loaded on first use, at most ``max_loaded`` at
    once (the least recently used idle one is unloaded to make room)."""

    def __init__(
        self,
        adapters: AdapterSet | None,
        registry: Registry,
        on_load: Any = None,
        max_loaded: int | None = None,
    ) -> None:
        self.adapters, self.registry, self.on_load = adapters, registry, on_load
        self.max_loaded = max_loaded

    def loaded(self) -> list[str]:
        return [str(a) for a in self.adapters.loaded()] if self.adapters is not None else []

    def pick(self, mode: AnswerMode, adapter: str | None) -> Use | None:
        """The hold on the adapter the request runs with (None: the base model)."""
        name = self._name(mode, adapter)
        return None if name is None else self._use(name)

    def _name(self, mode: AnswerMode, adapter: str | None) -> str | None:
        if adapter is not None:
            return adapter
        if not mode.uses_adapter:
            return None
        promoted = self.promoted()
        if promoted is not None:
            return promoted
        loaded = self.loaded()
        if len(loaded) == 1:
            return loaded[0]
        raise _no_adapter(mode.name, loaded)

    def promoted(self) -> str | None:
        if self.adapters is None:
            return None
        record = self.registry.promoted()
        return None if record is None or not record.servable else str(record.id)

    def _use(self, name: str) -> Use:
        assert self.adapters is not None
        before = self.loaded()
        if name not in before:
            self._check_servable(name)
        try:
            use = self.adapters.use(name, self.max_loaded)
        except AdaptersBusy as exc:
            raise ServiceError(503, "adapters_busy", str(exc), {"retry_after": 1}) from None
        if self.on_load is not None and self.loaded() != before:
            self.on_load(len(self.adapters.loaded()))
        return use

    def _check_servable(self, name: str) -> None:
        """404 unless the registry holds ``name`` as an adapter answers can run with."""
        try:
            record = self.registry.get(name)
        except RecordNotFound:
            raise ServiceError(
                404,
                "adapter_not_found",
                f"adapter {name!r} is not in the adapter registry; see GET /v1/adapters",
            ) from None
        if not record.servable or record.component != "generator":
            raise ServiceError(
                404,
                "adapter_not_found",
                f"adapter {name!r} is a {record.method} {record.component} model, "
                "not an adapter answers can run with",
            )


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
    """check -> pick the adapter -> retrieve -> prompt -> fit the budget -> submit.

    ``engine`` may be None until ``submit`` (the CLI closes the index before it loads the
    generator): the prompt is then fitted at ``submit``. ``retriever`` may be None when no mode
    that retrieves is asked for."""

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
        """Check ``ask``, choose its adapter, retrieve its passages and build its prompt, fitted
        to the token budget when the engine is known."""
        max_new = check(self.limits, ask, surface)
        mode = answer_mode(ask.mode)
        use = self._adapter(mode, ask.adapter)
        t0 = time.perf_counter()
        hits = self.search(ask) if mode.retrieves and ask.query else []
        seconds = time.perf_counter() - t0 if mode.retrieves else 0.0
        prepared = Prepared(
            ask,
            mode,
            use.name if use is not None else None,
            hits,
            prompt(mode, ask.messages, hits),
            max_new,
            seconds,
            surface,
            use=use,
        )
        return self.fit(prepared) if self.engine is not None else prepared

    async def aprepare(self, ask: Ask, surface: Surface = QUERY) -> Prepared:
        """``prepare`` in a worker thread (retrieval, counting tokens and loading an adapter
        on first use never block the event loop)."""
        import anyio

        return await anyio.to_thread.run_sync(self.prepare, ask, surface)

    def search(self, ask: Ask) -> list[Hit]:
        if self.retriever is None:
            raise ValueError("this pipeline has no index to retrieve from")
        hits = self.retriever.search(ask.query or "", ask.k, ask.search, ask.filters, self.reranker)
        return list(hits)

    def budget(self) -> Budget:
        """How prompts are counted (the engine's own template and tokenizer) and bounded."""
        if self.engine is None:
            raise ValueError("this pipeline has no engine to count tokens with")
        return Budget(
            self.engine.encode_chat,
            self.limits.max_prompt_tokens,
            context_length(self.engine.generator.model),
        )

    def fit(self, prepared: Prepared) -> Prepared:
        """``prepared`` with only the passages that fit the token budget (lowest-ranked dropped
        first, the last kept maybe cut short); 422 when the prompt is over it with none."""
        if prepared.fitted:
            return prepared
        budget, surface = self.budget(), prepared.surface
        if prepared.ask.max_new_tokens is None and budget.context is not None:
            # an answer length the caller did not set takes at most half the context
            prepared.max_new_tokens = min(prepared.max_new_tokens, budget.context // 2)
        room = budget.room(prepared.max_new_tokens)
        if room < 1:
            name = surface.max_new_field
            raise ServiceError(
                422,
                f"{name}_too_large",
                f"{name} must be < {budget.context}, the model's context in tokens",
            )
        mode, messages = prepared.mode, prepared.ask.messages
        try:
            hits, shown, _ = fit(budget, room, lambda h: prompt(mode, messages, h), prepared.hits)
        except PromptTooLong as exc:
            raise _over_budget(surface.prompt_field, exc, budget, prepared.max_new_tokens) from None
        prepared.hits, prepared.prompt, prepared.fitted = hits, shown, True
        return prepared

    def submit(self, prepared: Prepared) -> Answer:
        """Queue the prepared ask on the engine; the answer's request streams its text."""
        if self.engine is None:
            raise ValueError("this pipeline has no engine to generate with")
        prepared = self.fit(prepared)
        ask = prepared.ask
        try:
            request = self.engine.submit(
                prepared.prompt,
                prepared.max_new_tokens,
                stop=ask.stop,
                temperature=ask.temperature,
                seed=ask.seed,
                adapter=prepared.adapter,
            )
        except ValueError as exc:  # a seed, temperature or stop the engine cannot take
            raise ServiceError(422, "invalid_request", str(exc)) from None
        if prepared.use is not None:
            prepared.use.request = request  # the adapter stays loaded until it finishes
        return Answer(prepared, request, time.perf_counter())

    def given(
        self, ask: Ask, hits: Sequence[Hit], adapter: str | None, max_new_tokens: int
    ) -> Prepared:
        """A prepared ask whose passages and adapter the caller chose (the eval harness
        retrieves once per question and names each mode's adapter); no limits apply, the
        token budget included."""
        mode = answer_mode(ask.mode)
        shown = list(hits) if mode.retrieves else []
        return Prepared(
            ask,
            mode,
            adapter,
            shown,
            prompt(mode, ask.messages, shown),
            max_new_tokens,
            fitted=True,
        )

    def _adapter(self, mode: AnswerMode, adapter: str | None) -> Use | None:
        if self.adapters is None:
            if adapter is not None or mode.uses_adapter:
                raise _no_adapter(mode.name, [])
            return None
        return self.adapters.pick(mode, adapter)


def _over_budget(field_name: str, exc: PromptTooLong, budget: Budget, max_new: int) -> ServiceError:
    """The 422 for user text that alone is over the prompt's room, with both counts."""
    if exc.room == budget.max_prompt_tokens:
        bound = f"the per-request prompt budget (max_prompt_tokens) is {budget.max_prompt_tokens}"
    else:
        bound = f"the model's context of {budget.context} tokens less {max_new} for the answer"
    return ServiceError(
        422,
        f"{field_name}_too_long",
        f"{field_name}: the prompt is {exc.tokens} tokens with no passages; "
        f"at most {exc.room} fit ({bound})",
        {"prompt_tokens": exc.tokens, "budget": exc.room},
    )

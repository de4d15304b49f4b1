"""The answering pipeline: a question, an answering mode and options in; checked limits, the
retrieved passages, the grounded prompt, the generation request and the cited answer out.

Every answer goes through here: ``POST /v1/query``, ``POST /v1/chat/completions``, the
in-process ``ragtune ask`` and the eval harness's generation. The answering modes are described
once (``MODES``): rag and hybrid retrieve, ft and hybrid run a fine-tuned adapter. The limit
checks are written once (``check``), each caller naming its own fields (``Surface``). The prompt
is fitted to the token budget (``service.budget``): passages that do not fit are dropped or cut
short, and the citations name only what the prompt held; user text alone over the budget is a
422 before any adapter is loaded or passage retrieved. A named adapter in the registry is
loaded on first use (``AdapterChoice``); the eval harness's prompts (``given``) are fitted to
the model's context only.

It knows nothing of HTTP (callers format the response) nor of how the engine batches, how the
index searches or how an adapter is stored. Its errors are ``ServiceError`` with a status and a
code; the app maps them to responses, the CLI to one-line exits.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from service.adapters import AdaptersBusy
from service.answerlog import new_id, prompt_sha256, sha256
from service.budget import Budget, PromptTooLong, context_length, fit
from service.errors import ServiceError
from tuner.prompts import rag_messages
from tuner.registry import RecordNotFound

if TYPE_CHECKING:
    from retriever.index import Hit, Retriever
    from retriever.rerank import Reranker
    from service.adapters import AdapterSet, Use
    from service.answerlog import AnswerLog
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
    k_loc: tuple[str, ...] = ("k",)  # where k sits in the body (an error's details.loc)
    name: str = "query"  # the endpoint, as the answer log records it

    def text_loc(self, index: int) -> list[str | int]:
        """Where message ``index``'s text sits in the body."""
        return ["messages", index, "content"] if self.per else [self.text_field]


QUERY = Surface()
CHAT = Surface(
    "max_tokens",
    "message",
    256,
    " per message",
    k_always=False,
    prompt_field="messages",
    k_loc=("retrieval", "k"),
    name="chat",
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
    once the prompt is fitted to the token budget (``hits`` are then the passages it holds,
    ``prompt_ids`` its tokens, counted there and prefilled as they are);
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
    prompt_ids: list[int] | None = None  # the fitted prompt as the engine encodes it
    use: Use | None = None


@dataclass
class Answer:
    """A prepared ask in the engine: its request streams the text; the rest says what it cites."""

    prepared: Prepared
    request: GenerationRequest
    submitted_at: float
    id: str = ""  # the answer's id, which feedback names (service.answerlog)

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


def answer_record(answer_id: str, prepared: Prepared, request: GenerationRequest) -> dict:
    """What the answer log keeps of a finished answer: what was asked and shown, never who."""
    return {
        "id": answer_id,
        "created": time.time(),
        "surface": prepared.surface.name,
        "mode": prepared.mode.name,
        "adapter": prepared.adapter,
        "messages": prepared.ask.messages,
        "passages": [
            {
                "doc_id": h.doc_id,
                "chunk_id": h.chunk_id,
                "start": h.start,
                "end": h.end,
                "sha256": sha256(h.text),
            }
            for h in prepared.hits
        ],
        "prompt_sha256": prompt_sha256(prepared.prompt),
        "prompt_tokens": len(request.prompt_ids),
        "answer": request.text.strip(),
        "finish_reason": request.finish_reason,
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
        "title": h.title,
        "section": h.section,
    }
    if with_metadata:
        out["metadata"] = h.metadata
    return out


def check(limits: Limits, ask: Ask, surface: Surface = QUERY) -> int:
    """Raise a 422 for an ask over the limits; return its answer length in tokens."""
    max_new = ask.max_new_tokens or min(surface.default_max_new, limits.max_new_tokens)
    if max_new > limits.max_new_tokens:
        name = surface.max_new_field
        raise over(f"{name}_too_large", f"{name} must be <= {limits.max_new_tokens}", [name])
    if surface.k_always or (answer_mode(ask.mode).retrieves and ask.query):
        check_k(limits, ask.k, surface.k_loc)
    if len(ask.messages) > limits.max_messages:
        raise over(
            "messages_too_many",
            f"messages: at most {limits.max_messages} messages, got {len(ask.messages)}",
            ["messages"],
        )
    for i, m in enumerate(ask.messages):
        if len(m["content"]) > limits.max_question_chars:
            loc = surface.text_loc(i)
            raise over(
                f"{surface.text_field}_too_long",
                f"{'.'.join(map(str, loc))}: at most {limits.max_question_chars} characters"
                f"{surface.per}, got {len(m['content'])}",
                loc,
            )
    return max_new


def over(code: str, message: str, loc: Sequence[str | int], **details: Any) -> ServiceError:
    """A 422 for a value over a configured limit, naming the field as a validation error does
    (``details.loc``), with whatever else it measured."""
    return ServiceError(422, code, message, {"loc": ["body", *loc], **details})


def check_k(limits: Limits, k: int, loc: Sequence[str] = ("k",)) -> None:
    """Raise a 422 for more passages than a search may return (every retrieval)."""
    if k > limits.max_k:
        raise over("k_too_large", f"k must be <= {limits.max_k}", loc)


def check_search(limits: Limits, k: int, query: str) -> None:
    """Raise a 422 for a search over the limits (``POST /v1/search``)."""
    check_k(limits, k)
    if len(query) > limits.max_question_chars:
        raise over(
            "question_too_long",
            f"query: at most {limits.max_question_chars} characters, got {len(query)}",
            ["query"],
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
    is named. An adapter the registry holds is loaded on first use, within the adapter set's
    bound (the least recently used idle one is unloaded to make room)."""

    def __init__(
        self, adapters: AdapterSet | None, registry: Registry, on_load: Any = None
    ) -> None:
        self.adapters, self.registry, self.on_load = adapters, registry, on_load

    def loaded(self) -> list[str]:
        return [str(a) for a in self.adapters.loaded()] if self.adapters is not None else []

    def pick(self, mode: AnswerMode, adapter: str | None) -> Use | None:
        """The hold on the adapter the request runs with (None: the base model)."""
        name = self.name(mode, adapter)
        return None if name is None else self.hold(name)

    def name(self, mode: AnswerMode, adapter: str | None) -> str | None:
        """The adapter the request runs with (None: the base model), not loaded yet; 404 for a
        name the registry does not hold as a generator adapter."""
        if adapter is None:
            if not mode.uses_adapter:
                return None
            adapter = self.promoted()
        if adapter is None:
            loaded = self.loaded()
            if len(loaded) != 1:
                raise _no_adapter(mode.name, loaded)
            adapter = loaded[0]
        if adapter not in self.loaded():
            self._check_servable(adapter)
        return adapter

    def virtual_tokens(self, name: str | None) -> int:
        """Context positions ``name`` puts in front of every prompt (0 for the base model)."""
        return 0 if name is None or self.adapters is None else self.adapters.virtual_tokens(name)

    def promoted(self) -> str | None:
        if self.adapters is None:
            return None
        record = self.registry.promoted()
        return None if record is None or not record.servable else str(record.id)

    def hold(self, name: str) -> Use:
        """Hold ``name`` for the request, loading it on first use."""
        assert self.adapters is not None
        before = self.loaded()
        try:
            use = self.adapters.use(name)
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
    """check -> name the adapter -> the user's text against the budget -> hold (load) the
    adapter -> retrieve -> prompt -> fit the budget -> submit.

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
        answer_log: AnswerLog | None = None,
    ) -> None:
        self.limits, self.engine, self.retriever = limits, engine, retriever
        self.reranker, self.adapters, self.answer_log = reranker, adapters, answer_log

    def prepare(self, ask: Ask, surface: Surface = QUERY) -> Prepared:
        """Check ``ask``, choose its adapter, retrieve its passages and build its prompt, fitted
        to the token budget when the engine is known."""
        max_new = check(self.limits, ask, surface)
        mode = answer_mode(ask.mode)
        name = self._adapter(mode, ask.adapter)
        prepared = Prepared(ask, mode, name, [], prompt(mode, ask.messages, []), max_new)
        prepared.surface = surface
        if self.engine is not None:  # a 422 costs no adapter load and no search
            self._fit_bare(prepared, self.budget(name))
        if name is not None:
            assert self.adapters is not None
            prepared.use = self.adapters.hold(name)
        t0 = time.perf_counter()
        if mode.retrieves and ask.query:
            prepared.hits = self.search(ask)
            prepared.prompt = prompt(mode, ask.messages, prepared.hits)
            prepared.retrieve_s = time.perf_counter() - t0
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

    def budget(self, adapter: str | None = None, limited: bool = True) -> Budget:
        """How prompts are counted (the engine's own template and tokenizer) and bounded: by
        ``max_prompt_tokens`` when ``limited``, and by the model's context less what
        ``adapter`` puts in front of every prompt."""
        if self.engine is None:
            raise ValueError("this pipeline has no engine to count tokens with")
        if self.adapters is not None:
            reserved = self.adapters.virtual_tokens(adapter)
        elif adapter is not None and getattr(self.engine, "adapters", None) is not None:
            reserved = self.engine.adapters.virtual_tokens(adapter)  # the eval harness's set
        else:
            reserved = 0
        return Budget(
            self.engine.encode_chat,
            self.limits.max_prompt_tokens if limited else sys.maxsize,
            context_length(self.engine.generator.model),
            reserved,
        )

    def fit(self, prepared: Prepared, budget: Budget | None = None) -> Prepared:
        """``prepared`` with only the passages that fit the token budget (lowest-ranked dropped
        first, the last kept maybe cut short); 422 when the prompt is over it with none."""
        if prepared.fitted:
            return prepared
        budget = budget or self.budget(prepared.adapter)
        room = self._room(prepared, budget)
        mode, messages = prepared.mode, prepared.ask.messages
        try:
            hits, shown, ids = fit(budget, room, lambda h: prompt(mode, messages, h), prepared.hits)
        except PromptTooLong as exc:
            raise _over_budget(prepared, exc, budget) from None
        prepared.hits, prepared.prompt, prepared.prompt_ids = hits, shown, ids
        prepared.fitted = True
        return prepared

    def _fit_bare(self, prepared: Prepared, budget: Budget) -> None:
        """422 when the prompt is over the budget with no passages at all."""
        room = self._room(prepared, budget)
        try:
            fit(budget, room, lambda _: prompt(prepared.mode, prepared.ask.messages, []), [])
        except PromptTooLong as exc:
            raise _over_budget(prepared, exc, budget) from None

    def _room(self, prepared: Prepared, budget: Budget) -> int:
        """Tokens the prompt may take; an answer length the caller did not set is first cut to
        at most half the context. 422 when the answer alone fills the context."""
        if prepared.ask.max_new_tokens is None and budget.context is not None:
            prepared.max_new_tokens = min(prepared.max_new_tokens, budget.context // 2)
        room = budget.room(prepared.max_new_tokens)
        if room < 1:
            name = prepared.surface.max_new_field
            raise over(
                f"{name}_too_large",
                f"{name} must be < {budget.context}, the model's context in tokens"
                + (f" less the adapter's {budget.reserved}" if budget.reserved else ""),
                [name],
            )
        return room

    def submit(self, prepared: Prepared) -> Answer:
        """Queue the prepared ask on the engine; the answer's request streams its text."""
        if self.engine is None:
            raise ValueError("this pipeline has no engine to generate with")
        prepared = self.fit(prepared)
        ask = prepared.ask
        answer_id = new_id()
        on_finish = None
        if self.answer_log is not None:
            answer_log = self.answer_log

            def on_finish(request: GenerationRequest) -> None:
                answer_log.add(answer_record(answer_id, prepared, request))

        try:
            request = self.engine.submit(
                prepared.prompt,
                prepared.max_new_tokens,
                stop=ask.stop,
                temperature=ask.temperature,
                seed=ask.seed,
                adapter=prepared.adapter,
                prompt_ids=prepared.prompt_ids,
                on_finish=on_finish,
            )
        except ValueError as exc:  # a seed, temperature or stop the engine cannot take
            raise ServiceError(422, "invalid_request", str(exc)) from None
        except LookupError:  # its adapter was unloaded since it was chosen
            raise ServiceError(
                503,
                "adapter_unloaded",
                f"adapter {prepared.adapter!r} was unloaded before the request ran; retry",
                {"retry_after": 1},
            ) from None
        if prepared.use is not None:
            prepared.use.request = request  # the adapter stays loaded until it finishes
        return Answer(prepared, request, time.perf_counter(), answer_id)

    def given(
        self,
        ask: Ask,
        hits: Sequence[Hit],
        adapter: str | None,
        max_new_tokens: int,
        *,
        cut: bool = False,
    ) -> Prepared:
        """A prepared ask whose passages and adapter the caller chose (the eval harness
        retrieves once per question and names each mode's adapter). No request limits apply,
        but the prompt and the answer must fit the model's context: passages that do not are
        dropped or cut short as ``prepare`` does, and ``hits`` are then what the prompt holds.
        With ``cut``, a question whose prompt is over the context even with no passages is cut
        from its end until it fits (the result's ``ask`` holds what was asked); a 422 still
        when not even an empty question fits. ``max_new_tokens`` of the result is the answer
        length used (cut to at most half the context, as for a request that sets none)."""
        mode = answer_mode(ask.mode)
        shown = list(hits) if mode.retrieves else []
        prepared = Prepared(
            ask, mode, adapter, shown, prompt(mode, ask.messages, shown), max_new_tokens
        )
        budget = self.budget(adapter, limited=False)
        if cut:
            prepared.ask = _cut_to_fit(prepared, self._room(prepared, budget), budget)
            prepared.prompt = prompt(mode, prepared.ask.messages, shown)
        return self.fit(prepared, budget)

    def _adapter(self, mode: AnswerMode, adapter: str | None) -> str | None:
        if self.adapters is None:
            if adapter is not None or mode.uses_adapter:
                raise _no_adapter(mode.name, [])
            return None
        return self.adapters.name(mode, adapter)


def _cut_to_fit(prepared: Prepared, room: int, budget: Budget) -> Ask:
    """``prepared.ask`` with its question (the last user message) cut to the longest start
    whose prompt, with no passages, fits ``room`` tokens; as it was when it fits whole or when
    not even an empty question fits (``fit`` then says how far over it is)."""
    ask, mode = prepared.ask, prepared.mode
    last = max((i for i, m in enumerate(ask.messages) if m["role"] == "user"), default=None)
    if last is None:
        return ask
    text = ask.messages[last]["content"]

    def cut_to(n: int) -> Ask:
        messages = [*ask.messages[:last], {**ask.messages[last], "content": text[:n]}]
        return replace(ask, messages=[*messages, *ask.messages[last + 1 :]])

    def fits(n: int) -> bool:
        return budget.count(prompt(mode, cut_to(n).messages, [])) <= room

    if fits(len(text)) or not fits(0):
        return ask
    kept, over = 0, len(text)  # fits(kept), not fits(over)
    while over - kept > 1:
        middle = (kept + over) // 2
        kept, over = (middle, over) if fits(middle) else (kept, middle)
    return cut_to(kept)


def _over_budget(prepared: Prepared, exc: PromptTooLong, budget: Budget) -> ServiceError:
    """The 422 for a prompt over its room with no passages, with both counts. When the prompt
    alone would fit but not next to the answer, it names the answer length."""
    surface, max_new = prepared.surface, prepared.max_new_tokens
    reserved = f" and {budget.reserved} for the adapter" if budget.reserved else ""
    left = (budget.context or 0) - budget.reserved - exc.tokens  # for the answer
    if exc.tokens <= budget.max_prompt_tokens and left >= 1:
        name = surface.max_new_field
        return over(
            f"{name}_too_large",
            f"{name}: the prompt is {exc.tokens} tokens with no passages, so at most {left} "
            f"are left for the answer in the model's context of {budget.context} tokens"
            f"{reserved}; got {max_new}",
            [name],
            prompt_tokens=exc.tokens,
            max_new_tokens=left,
        )
    if exc.room == budget.max_prompt_tokens:
        bound = f"the per-request prompt budget (max_prompt_tokens) is {budget.max_prompt_tokens}"
    else:
        bound = (
            f"the model's context of {budget.context} tokens less {max_new} for the answer"
            f"{reserved}"
        )
    field_name = surface.prompt_field
    return over(
        f"{field_name}_too_long",
        f"{field_name}: the prompt is {exc.tokens} tokens with no passages; "
        f"at most {exc.room} fit ({bound})",
        [field_name],
        prompt_tokens=exc.tokens,
        budget=exc.room,
    )

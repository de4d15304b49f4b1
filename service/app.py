"""The FastAPI application: builds the app, loads models in its lifespan, reports readiness.

Models load in the lifespan, never at import; ``/readyz`` says false until they are loaded and
the process fails loudly (exits) when they cannot be. Routes stay thin and call library code.
A request passes, outermost first: ``BrowserGuard`` (Host, Origin, bound socket; 403), CORS for
``allowed_origins`` (auth on), ``Authenticate`` (401 before any body is read), ``BodyLimit``
(413), then the routes. The interactive docs (``/docs``, ``/redoc``) load their assets from a CDN,
so they are served only with ``api_docs`` on; ``/openapi.json`` is always served, to anyone.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.cors import CORSMiddleware

from service import responses
from service.adapters import AdapterSet
from service.auth import Authenticate, Reader, check_bind
from service.evalruns import make_eval_runner
from service.fusionfit import FusionFitter
from service.generation.engine import GenerationEngine
from service.guard import BrowserGuard
from service.limits import BodyLimit
from service.loading import (
    generator_from_settings,
    index_embedder,
    open_retriever,
    reranker_from_settings,
    shared_state,
)
from service.runtime import configure_torch, public_name
from service.settings import Settings, get_settings
from service.state import AppState

log = logging.getLogger(__name__)


Loader = Callable[[AppState], None]
# what /readyz tells anyone of a loaded model
SHOWN = ("name", "hub_id", "source", "dim", "adapter", "precision", "documents")


def shown(identity: dict[str, Any]) -> dict[str, Any]:
    """A loaded model as ``/readyz`` shows it: its name, hub id and kind, never a folder (a
    model configured by folder is named by the folder's last part)."""
    public = {k: identity[k] for k in SHOWN if k in identity}
    if isinstance(public.get("name"), str):
        public["name"] = public_name(public["name"], identity.get("hub_id"))
    return public


def load_models(state: AppState) -> None:
    configure_torch(state.settings)
    state.embedder = index_embedder(state.settings)  # a fine-tuned one if the index uses it
    state.loaded["embedder"] = state.embedder.identity
    state.generator = generator_from_settings(state.settings)
    state.loaded["generator"] = {
        **state.generator.identity,
        "precision": state.settings.generator_precision,
    }
    state.adapters = AdapterSet(
        state.generator,
        state.settings.layout.adapters,
        max_loaded=state.settings.limits.max_loaded_adapters,
    )
    state.engine = GenerationEngine(
        state.generator,
        max_batch=state.settings.limits.max_batch_generation,
        metrics=state.metrics,
        adapters=state.adapters,
        precision=state.settings.generator_precision,
        decode_threads=state.settings.decode_threads,
    )
    state.retriever = open_retriever(state.settings, state.embedder)
    state.reranker = reranker_from_settings(state.settings)
    state.loaded["index"] = {"documents": len(state.retriever)}


def refresh_old_index(state: AppState) -> None:
    """Start re-embedding an index whose chunks were embedded without their title and section
    (an index from an older ragtune), with the embedder in use, unless settings say not to.
    Searches keep the old vectors until the atomic switch, so nothing waits for it."""
    retriever = state.retriever
    if retriever is None or not retriever.needs_reembedding:
        return
    if not state.settings.retrieval.reembed_old_index:
        log.warning("the index needs re-embedding with chunk context; reembed_old_index is off")
        return
    state.reindexer.start({"refresh": True}, reason="startup: chunks embedded without context")


def load_in_own_thread(loader: Loader, state: AppState) -> None:
    """Run ``loader`` in a thread of its own that ends with it. Loading runs torch's parallel
    work, and a thread that has keeps an OpenMP pool for its life; an anyio worker lives on to
    serve requests, and a second pool beside the engine's makes libgomp throttle every worker's
    waiting (see ``service.generation.stepthreads``)."""
    import threading

    failed: list[BaseException] = []

    def run() -> None:
        try:
            loader(state)
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=run, name="ragtune-load")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]


def follow_promotions(state: AppState) -> Any:
    """With a shared database: hear every replica's promotions (``tuner.pgregistry``) and
    load the newly promoted adapter at once, so the first request after it finds it warm."""
    database = shared_state(state.settings)
    if database is None:
        return None
    from tuner.pgregistry import RegistryFollower

    def warm(adapter_id: str | None) -> None:
        if adapter_id is not None and state.adapters is not None:
            state.adapters.load(adapter_id)

    return RegistryFollower(database, warm).start()


# The console's page: script and connections to this origin only; inline styles and data: images
# for the self-contained reports shown in its sandboxed srcdoc frames, which inherit this policy.
CONSOLE_POLICY = (
    "default-src 'self'; script-src 'self'; connect-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; frame-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


def create_app(settings: Settings | None = None, loader: Loader = load_models) -> FastAPI:
    """Build the app; ``loader`` fills the state at startup (tests pass a tiny one)."""
    settings = settings or get_settings()
    check_bind(settings)  # fail before loading anything: auth off only on loopback
    state = AppState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import anyio

        log.info(
            "loading models (embedder %s, generator %s)", settings.embedder, settings.generator
        )
        await anyio.to_thread.run_sync(load_in_own_thread, loader, state)
        if state.jobs is None:
            state.jobs = tune.make_job_runner(state)
        state.jobs.start()
        if state.evals is None:
            state.evals = make_eval_runner(state)
        state.evals.start()
        if state.sweeps is None:
            from service.sweeps import SweepRunner

            state.sweeps = SweepRunner(
                settings.layout.sweeps,
                state.jobs,
                state.registry(),
                evals=state.evals,
                database=shared_state(settings),
            )
        state.sweeps.start()
        if settings.answer_log.enabled and state.answers is None:
            from service.answerlog import AnswerLog

            state.answers = AnswerLog(settings.layout.answers, settings.answer_log.retention_days)
        follower = follow_promotions(state)
        refresh_old_index(state)
        fitter = FusionFitter(state)
        if settings.retrieval.fit_fusion:
            fitter.start()
        state.ready = True
        log.info("ready on %s:%s", settings.host, settings.port)
        yield
        state.ready = False
        await anyio.to_thread.run_sync(state.sweeps.close)  # its sweeps resume next start
        await anyio.to_thread.run_sync(state.jobs.close)  # a running job resumes next start
        await anyio.to_thread.run_sync(state.evals.close)  # a running eval starts over then
        await anyio.to_thread.run_sync(state.reindexer.close)  # stops after its current batch
        await anyio.to_thread.run_sync(fitter.close)
        if follower is not None:
            await anyio.to_thread.run_sync(follower.close)
        if state.engine is not None:
            state.engine.close()
        if state.answers is not None:
            await anyio.to_thread.run_sync(state.answers.close)  # after the last answer
        if state.retriever is not None:
            state.retriever.close()

    docs = settings.api_docs
    app = FastAPI(
        title="ragtune",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
    )
    app.state.ragtune = state
    responses.install(app)
    # the last added runs first: metrics (so refusals are counted too), guard, CORS, keys, body
    # limit, then the routes
    app.add_middleware(BodyLimit, max_bytes=settings.limits.max_body_bytes)
    app.add_middleware(Authenticate, settings=settings)
    if settings.allowed_origins and not settings.auth_disabled:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
            expose_headers=["Retry-After"],
        )
    app.add_middleware(BrowserGuard, settings=settings)
    app.middleware("http")(state.metrics.middleware)
    from service.routes import (
        adapters,
        chat,
        documents,
        evals,
        feedback,
        files,
        index,
        query,
        sweeps,
        tune,
    )

    app.include_router(adapters.router)
    app.include_router(documents.router)
    app.include_router(query.router)
    app.include_router(chat.router)
    app.include_router(files.router)
    app.include_router(index.router)
    app.include_router(tune.router)
    app.include_router(sweeps.router)
    app.include_router(evals.router)
    app.include_router(feedback.router)

    console = Path(__file__).parent / "console"
    app.mount("/console", StaticFiles(directory=console), name="console")

    @app.get("/", include_in_schema=False, response_class=FileResponse)
    def index_page() -> FileResponse:
        """The web console (static files from this package, same origin as the API): its own
        script only, never framed by another site; reports open in sandboxed frames."""
        headers = {"Content-Security-Policy": CONSOLE_POLICY, "X-Content-Type-Options": "nosniff"}
        return FileResponse(console / "index.html", headers=headers)

    @app.get("/metrics", tags=["ops"], response_class=Response)
    def metrics(_: Reader) -> Response:
        """Prometheus metrics (needs the read scope)."""
        return state.metrics.render(state)  # type: ignore[no-any-return]

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    def readyz() -> JSONResponse:
        """True once models and index are loaded; 503 until then."""
        models = {role: shown(identity) for role, identity in state.loaded.items()}
        body: dict[str, Any] = {"ready": state.ready, "models": models}
        if state.retriever is not None:
            body["documents"] = len(state.retriever)
            body["needs_reembedding"] = state.retriever.needs_reembedding
        return JSONResponse(body, status_code=200 if state.ready else 503)

    return app

"""The FastAPI application: routers, error handlers, the lifespan that loads the model, and ``run``."""

from __future__ import annotations

import asyncio
import gc
import logging
import logging.config
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import faiss
import uvicorn
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from prometheus_client import multiprocess as prometheus_multiprocess
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.devices import available_cores
from core.home import ArtifactHome
from service import metrics, model_thread
from service.access_log import log_config as access_log_config
from service.batching import Batcher, Batchers
from service.collection import follow
from service.decoding import decode_pool
from service.fastpath import DirectRoutes
from service.limits import BodyLimitMiddleware
from service.metrics import Metrics, MetricsMiddleware
from service.routes import admin, classify, embed, health, images, items, neighbors
from service.settings import Settings
from service.state import ModelStore
from service.threads import set_threads, threads_per_worker
from service.workers import supervise

# The routers, the throughput routes first: the router tries routes in order, and every miss costs a match.
ROUTES = (classify, neighbors, embed, health, images, items, admin, metrics)

log = logging.getLogger("service")

STATIC = Path(__file__).parent / "static"
SWITCH_INTERVAL = 0.001  # seconds; see run()

_WHERE = {"query": "query parameter", "path": "path parameter", "body": "form field", "header": "header"}


def describe_validation(exc: RequestValidationError) -> str:
    """FastAPI's error list as one sentence that names each bad parameter and what is wrong with it."""
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        where = _WHERE.get(loc[0], loc[0]) if loc else "request"
        name = ".".join(loc[1:]) or "body"
        parts.append(f"{where} `{name}`: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with a readable ``detail`` string (the contract's error shape), and FastAPI's list as ``errors``."""
    errors = [{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in exc.errors()]  # no echoed input
    return JSONResponse({"detail": describe_validation(exc), "errors": jsonable_encoder(errors)}, status_code=422)


def allowed_methods(routers: list[APIRouter], path: str) -> list[str]:
    """Every method some route of ``routers`` answers at ``path`` (one path can have several routes)."""
    found: set[str] = set()
    for router in routers:
        for route in router.routes:
            if isinstance(route, APIRoute) and route.path_regex.match(path):
                found |= route.methods
    return sorted(found)


def method_not_allowed_handler(routers: list[APIRouter]) -> Callable[[Request, StarletteHTTPException], Awaitable[Response]]:
    """HTTP errors as FastAPI answers them, except that a 405's ``Allow`` lists every method of the
    path: Starlette's names only the first route whose path matched (``OPTIONS /neighbors``
    answered ``Allow: GET`` although POST /neighbors exists)."""

    async def handle(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(allowed_methods(routers, request.url.path))}
        return await http_exception_handler(request, exc)

    return handle


async def unhandled_error(request: Request, exc: Exception) -> JSONResponse:
    """Only genuine bugs get here (bad input is mapped to 4xx where it is met): log it, answer JSON 500."""
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal server error"}, status_code=500)


async def poll_current(store: ModelStore, interval: float) -> None:
    """Follow CURRENT: a newly published version is loaded off the event loop and swapped in."""
    while True:
        await asyncio.sleep(interval)
        try:
            await run_in_threadpool(store.reload_if_changed)
        except Exception:  # noqa: BLE001 - the poller must outlive any one bad read
            log.exception("checking for a new model failed")


def make_batchers(settings: Settings, app_metrics: Metrics | None = None) -> Batchers:
    """The model's batchers, one per kind of work in ``service.model_thread``. One thread runs every
    forward pass, with ``settings.torch_threads``."""
    executor = ThreadPoolExecutor(1, thread_name_prefix="model", initializer=set_threads, initargs=(settings.torch_threads,))
    # A batch's uploads are decoded over as many threads as the forward pass uses (one: by the model thread itself).
    pool = decode_pool(settings.torch_threads or available_cores())
    size, wait = settings.max_batch_size, settings.max_batch_wait_ms / 1000
    fns = {"classify": partial(model_thread.classify, pool=pool), "neighbors": partial(model_thread.embed_and_search, pool=pool),
           "embed": partial(model_thread.embed, pool=pool), "search": model_thread.neighbors_of_ids}
    return Batchers(
        {
            kind: Batcher(fn, executor, max_size=size, max_wait=wait, on_batch=app_metrics.batch_observer(kind) if app_metrics else None)
            for kind, fn in fns.items()
        },
        executor,
        pool,
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app over ``settings.home``. Cheap: the bundle is loaded by the lifespan, at startup."""
    settings = settings or Settings()
    store = ModelStore(ArtifactHome(settings.home), settings.neighbor_table_max_items)
    app_metrics = Metrics(store)
    batchers = make_batchers(settings, app_metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        set_threads(settings.torch_threads)  # per process, so here rather than at import
        # GET /neighbors?id= searches one query on this (event-loop) thread: OpenMP's fork-join
        # costs more than it saves there (0.40 ms with 2 threads vs 0.18 ms with 1, 10k x 128).
        faiss.omp_set_num_threads(1)
        # What is loaded by now (torch, FastAPI, pydantic: ~380k objects) lives as long as the
        # process, yet every full collection of the cyclic GC walked it: 0.1-0.4 s with the GIL
        # held, a stall of every request in flight (the p99 of /classify under load). Frozen, a
        # full collection takes ~1 ms. Bundles load after this, so a replaced one is still collected.
        gc.freeze()
        if settings.index_backend == "qdrant":
            from service import qdrant_collection  # qdrant-client: an optional dependency

            store.use_collection(await run_in_threadpool(qdrant_collection.connect, settings))
        await run_in_threadpool(store.reload_if_changed)
        if store.bundle is None:
            log.warning("not ready: %s", store.unavailable_detail())
        poller = asyncio.create_task(poll_current(store, settings.reload_interval)) if settings.reload_interval > 0 else None
        follower = asyncio.create_task(follow(store.collection))  # other processes' writes (service.collection)
        yield
        if poller is not None:
            poller.cancel()
        follower.cancel()
        await batchers.close()
        if settings.index_backend == "qdrant":
            store.collection.close()  # embedded Qdrant holds its folder's lock until closed

    app = FastAPI(
        title="SimCLR image embeddings",
        description="Classify images and find similar ones with a self-supervised SimCLR encoder.",
        version="0.1.0",
        lifespan=lifespan,
        telemetry={"tracing": settings.opentelemetry, "metrics": settings.opentelemetry, "logs": settings.opentelemetry},
    )
    app.state.settings = settings
    app.state.store = store
    app.state.metrics = app_metrics
    app.state.batchers = batchers
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, method_not_allowed_handler([m.router for m in ROUTES]))
    app.add_exception_handler(Exception, unhandled_error)
    # Added first = innermost: see service.fastpath. The routes come from our routers themselves:
    # FastAPI >= 0.16x keeps an included router as one wrapper entry in app.router.routes.
    app.add_middleware(DirectRoutes, routes=[*classify.router.routes, *neighbors.router.routes, *embed.router.routes])
    app.add_middleware(BodyLimitMiddleware, max_upload_bytes=settings.max_upload_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST", "DELETE"], allow_headers=["*"]
        )
    app.add_middleware(MetricsMiddleware, metrics=app_metrics)  # added last = outermost: sees every answer
    for module in ROUTES:
        app.include_router(module.router)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        """The web page: upload or pick an image, see its classes and nearest neighbours."""
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def create_worker_app() -> FastAPI:
    """The app in one of ``run``'s worker processes, which read their settings from the environment it set."""
    sys.setswitchinterval(SWITCH_INTERVAL)  # per process: see run()
    return create_app(Settings())


def run(settings: Settings | None = None) -> None:
    """Serve the app with uvicorn until interrupted (``service.serve.main``: ``simclr serve``, ``python -m service``).

    With ``settings.workers`` > 1, that many processes serve the port
    (``service.workers``), each with its own copy of the model, batcher and reload
    poller (a published model reaches each through polling; /admin/reload reloads
    the process that answers it at once). One process cannot use a second core
    for HTTP: its event loop is the limit on /classify. Metrics are then summed
    over the processes with prometheus-client's multiprocess mode, in a
    directory made fresh for each run.
    """
    settings = settings or Settings()
    # The model thread needs the GIL only briefly, to hand a batch's results back, but waits
    # up to the switch interval (5 ms by default) for the event loop to let go of it: a stall
    # per forward pass. 1 ms: /classify at 32 connections 410 -> 460-625 requests/s (build
    # machine, another process training beside it).
    sys.setswitchinterval(SWITCH_INTERVAL)
    log_config = access_log_config(settings.log_level)
    # uvicorn builds each access-log line's arguments before the logger drops them below info.
    access_log = settings.log_level.lower() in ("info", "debug", "trace")
    where = {"host": settings.host, "port": settings.port, "log_level": settings.log_level, "log_config": log_config,
             "access_log": access_log}
    if settings.workers == 1:
        uvicorn.run(create_app(settings), **where)
        return
    if settings.torch_threads is None:
        settings = settings.model_copy(update={"torch_threads": threads_per_worker(settings.workers)})
    if settings.reload_interval <= 0:
        log.warning("%d workers with SIMCLR_RELOAD_INTERVAL=0: /admin/reload reaches one process only", settings.workers)
    logging.config.dictConfig(log_config)  # the supervisor's own lines, formatted like the workers'
    with tempfile.TemporaryDirectory(prefix="simclr-metrics-") as metrics_dir:
        os.environ.update(settings.as_environment())
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # read when each worker imports prometheus_client
        options = {"log_level": settings.log_level, "log_config": log_config, "access_log": access_log}
        supervise("service.app:create_worker_app", settings.workers, settings.host, settings.port, options,
                  on_exit=lambda pid: prometheus_multiprocess.mark_process_dead(pid, metrics_dir))

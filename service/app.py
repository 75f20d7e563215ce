"""The FastAPI application: routers, error handlers, the lifespan that loads the model, and ``run``."""

from __future__ import annotations

import copy
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import faiss
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service.limits import BodyLimitMiddleware
from service.routes import classify, health, images, neighbors
from service.settings import Settings
from service.state import ModelStore
from training.artifacts import ArtifactHome

log = logging.getLogger("service")

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


async def unhandled_error(request: Request, exc: Exception) -> JSONResponse:
    """Only genuine bugs get here (bad input is mapped to 4xx where it is met): log it, answer JSON 500."""
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal server error"}, status_code=500)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app over ``settings.home``. Cheap: the bundle is loaded by the lifespan, at startup."""
    settings = settings or Settings()
    store = ModelStore(ArtifactHome(settings.home))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.torch_threads:
            # Per process, so here rather than at import; FAISS has its own OpenMP pool.
            torch.set_num_threads(settings.torch_threads)
            faiss.omp_set_num_threads(settings.torch_threads)
        await run_in_threadpool(store.reload_if_changed)
        if store.bundle is None:
            log.warning("not ready: %s", store.unavailable_detail())
        yield

    app = FastAPI(
        title="SimCLR image embeddings",
        description="Classify images and find similar ones with a self-supervised SimCLR encoder.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unhandled_error)
    app.add_middleware(BodyLimitMiddleware, max_upload_bytes=settings.max_upload_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"], allow_headers=["*"]
        )
    for module in (health, classify, neighbors, images):
        app.include_router(module.router)
    return app


def run(settings: Settings | None = None) -> None:
    """Serve the app with uvicorn until interrupted (``simclr serve``, ``python -m service``)."""
    settings = settings or Settings()
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    # Our "service" logger through uvicorn's handler, so model loads and errors show like its own lines.
    log_config["loggers"]["service"] = {"handlers": ["default"], "level": settings.log_level.upper(), "propagate": False}
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level, log_config=log_config)

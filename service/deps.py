"""Request dependencies. Each is ``async`` on purpose: FastAPI runs plain ``def``
dependencies in the threadpool, a thread hop per request that /neighbors-by-id
cannot afford for what is an attribute read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from service.batching import Batchers
from service.settings import Settings
from service.state import ModelStore
from training.artifacts import LoadedBundle


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> ModelStore:
    return request.app.state.store


async def get_batchers(request: Request) -> Batchers:
    return request.app.state.batchers


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ModelStore, Depends(get_store)]
BatchersDep = Annotated[Batchers, Depends(get_batchers)]


def served_bundle(store: ModelStore) -> LoadedBundle:
    """The store's bundle, taken once for a request's whole life (a reload may swap the store's); 503 if none."""
    bundle = store.bundle
    if bundle is None:
        raise HTTPException(status_code=503, detail=store.unavailable_detail())
    return bundle


async def get_bundle(store: StoreDep) -> LoadedBundle:
    return served_bundle(store)


BundleDep = Annotated[LoadedBundle, Depends(get_bundle)]


@dataclass(frozen=True)
class Serving:
    """What an upload route needs, taken once per request: the bundle it answers with, settings, batchers."""

    bundle: LoadedBundle
    settings: Settings
    batchers: Batchers


def serving(request: Request) -> Serving:
    """``Serving`` for ``request``, read straight from the app state (503 while no model is loaded).

    The upload routes call this instead of declaring three ``Depends``: FastAPI
    solves every dependency per request, and its cache-key step unwraps the
    callable with ``inspect.unwrap`` each time (up to a third of the event loop's
    samples on /classify in py-spy, FastAPI 0.165; with ``receive_upload`` this took
    /classify from 666 to 785 requests/s on one process). Those routes are the
    service's throughput path; the others keep the declarative dependencies.
    """
    state = request.app.state
    return Serving(served_bundle(state.store), state.settings, state.batchers)

"""Request dependencies. Each is ``async`` on purpose: FastAPI runs plain ``def``
dependencies in the threadpool, a thread hop per request that /neighbors-by-id
cannot afford for what is an attribute read."""

from __future__ import annotations

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


async def get_bundle(store: StoreDep) -> LoadedBundle:
    """The bundle this request uses for its whole life (taken once: a reload may swap the store's)."""
    bundle = store.bundle
    if bundle is None:
        raise HTTPException(status_code=503, detail=store.unavailable_detail())
    return bundle


BundleDep = Annotated[LoadedBundle, Depends(get_bundle)]

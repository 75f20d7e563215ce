"""Request dependencies of the routes that use FastAPI's declarative ``Depends``.

Each is ``async`` on purpose: FastAPI runs plain ``def`` dependencies in the
threadpool, a thread hop per request that /neighbors-by-id cannot afford for
what is an attribute read. The upload routes read the same state without
``Depends`` (``service.fastpath.serving``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, HTTPException, Request

from core.bundles import LoadedBundle
from service.collection import View
from service.settings import Settings
from service.state import ModelStore

if TYPE_CHECKING:  # qdrant-client is an optional dependency, imported only with that backend
    from service.qdrant_collection import QdrantView

    AnyView = View | QdrantView  # what store.view holds; the routes read it through the same methods
else:
    AnyView = View


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> ModelStore:
    return request.app.state.store


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ModelStore, Depends(get_store)]


def no_item(item_id: int) -> HTTPException:
    """The 404 of a route given an id that is not (or no longer) a live item of the served collection."""
    return HTTPException(404, f"no item with id {item_id}")


def served_bundle(store: ModelStore) -> LoadedBundle:
    """The store's bundle, taken once for a request's whole life (a reload may swap the store's); 503 if none."""
    return served_view(store).bundle


async def get_bundle(store: StoreDep) -> LoadedBundle:
    return served_bundle(store)


BundleDep = Annotated[LoadedBundle, Depends(get_bundle)]


def served_view(store: ModelStore) -> AnyView:
    """The store's view (the bundle with the collection), taken once for a request's whole life; 503 if none."""
    view = store.view
    if view is None:
        raise HTTPException(status_code=503, detail=store.unavailable_detail())
    return view


async def get_view(store: StoreDep) -> AnyView:
    return served_view(store)


ViewDep = Annotated[AnyView, Depends(get_view)]

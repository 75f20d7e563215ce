"""GET /neighbors (by item id) and POST /neighbors (by upload): the most similar items.

Items are the bundle's indexed images and the collection's added ones (``service.collection``):
each route takes the store's view once, and runs its code of before the collection when the
view is ``plain`` (nothing added or deleted), the view's merged search otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from core.bundles import LoadedBundle
from index.faiss_index import reconstruct, search
from service.collection import added_source
from service.decoding import prepare_upload
from service.deps import AnyView, ViewDep, no_item
from service.fastpath import UPLOAD_BODY, DirectRoute, int_parameter, int_query, json_response, receive_upload, serving
from service.frozen import MAX_K
from service.schemas import Neighbor, NeighborQuery, NeighborsResponse, errors
from service.search_parts import INLINE_MACS, inline_macs

router = APIRouter(tags=["model"])

DEFAULT_K = 5
K = Query(ge=1, le=MAX_K, description=f"how many neighbours, 1..{MAX_K}")


def check_id(bundle: LoadedBundle, item_id: int) -> None:
    """404 for an id outside the index (negative ids included: numpy would wrap them around)."""
    size = bundle.index.ntotal
    if not 0 <= item_id < size:
        raise HTTPException(404, f"no indexed image with id {item_id}; ids are 0..{size - 1}")


def hits(bundle: LoadedBundle, scores: np.ndarray, ids: np.ndarray, k: int, exclude: int | None = None,
         added: Mapping[int, dict[str, Any] | None] | None = None) -> list[Neighbor]:
    """One query's search results ``(scores, ids)``, best first, as at most k neighbours without ``exclude``.
    ``added``: the payloads of the added items among them (``described``); the others are the bundle's."""
    names = bundle.label_names  # the classifier's classes, or a model without one: its index's (core.bundles)
    added = added or {}
    out = []
    for score, i in zip(scores.tolist(), ids.tolist()):
        # Dropped by id, not by rank: a duplicate image can tie with the query and come first.
        if i < 0 or i == exclude or len(out) == k:
            continue
        if i in added:
            out.append(Neighbor(id=i, label=None, score=score, image_url=f"/images/{i}", source=added_source(i), payload=added[i]))
            continue
        if i >= len(bundle.labels):  # an added item deleted between the search and ``described`` (a live Qdrant collection)
            continue
        label = int(bundle.labels[i])
        name, source = names[label] if label >= 0 else None, bundle.sources[i]
        out.append(
            Neighbor(
                id=i,
                label=name,
                score=score,
                image_url=f"/images/{i}",
                source=source,
                payload={"source": source, "label": name},
            )
        )
    return out


async def described(view: AnyView, ids: np.ndarray) -> Mapping[int, dict[str, Any] | None]:
    """The payloads of the added items among ``ids`` in ``view``: a dict lookup, or a Qdrant read off the event loop."""
    if view.remote:
        return await run_in_threadpool(view.added_payloads, ids.tolist())
    return view.added_payloads(ids.tolist())


def neighbors(bundle: LoadedBundle, query: np.ndarray, k: int, exclude: int | None = None) -> list[Neighbor]:
    """The k best hits for one embedding, without ``exclude`` (the query itself, when it is indexed)."""
    scores, ids = search(bundle.index, query, k if exclude is None else k + 1)
    return hits(bundle, scores[0], ids[0], k, exclude)


@router.get("/neighbors", response_model=NeighborsResponse, responses=errors(404, 422, 503))
async def neighbors_of_id(
    request: Request,
    view: ViewDep,
    item_id: Annotated[int, Query(alias="id", description="an item's id: an indexed image's (0..index size - 1) or an added one's")],
    k: Annotated[int, K] = DEFAULT_K,
) -> NeighborsResponse:
    """The k items most similar to item ``id``, not counting itself."""
    bundle = view.bundle
    if not view.plain:
        return await collection_neighbors_of_id(request, view, item_id, k)
    check_id(bundle, item_id)
    if bundle.id_neighbors is not None:  # precomputed at load for small indexes (service.frozen)
        scores, ids = bundle.id_neighbors
        found = hits(bundle, scores[item_id], ids[item_id], k, exclude=item_id)
    elif inline_macs(bundle.index) <= INLINE_MACS:
        # On the event loop on purpose: a search this small costs less than a hop to another thread and back.
        found = neighbors(bundle, reconstruct(bundle.index, item_id), k, exclude=item_id)
    else:  # a large or approximate index: searched in the model thread, batched with concurrent requests'
        scores, ids = await request.app.state.batchers["search"].submit(bundle, (view, item_id, k))
        found = hits(bundle, scores, ids, k, exclude=item_id)
    return NeighborsResponse(model_version=bundle.version, query=NeighborQuery(id=item_id), neighbors=found)


async def collection_neighbors_of_id(request: Request, view: AnyView, item_id: int, k: int) -> NeighborsResponse:
    """GET /neighbors?id= over a view with added or deleted items (``View.neighbors_of``), or on Qdrant."""
    if not (await run_in_threadpool(view.has, item_id) if view.remote else view.has(item_id)):
        raise no_item(item_id)
    if view.remote:  # network calls: the threadpool, not the model thread that runs forward passes
        try:
            scores, ids = await run_in_threadpool(view.neighbors_of, item_id, k)
        except KeyError:  # deleted by another request since ``has``: a Qdrant view is live, not a snapshot
            raise no_item(item_id) from None
    elif view.neighbors_macs(item_id, k) <= INLINE_MACS:  # the table's hits and a few added vectors: cheaper than a thread hop
        scores, ids = view.neighbors_of(item_id, k)
    else:  # a search over the index or many added vectors: in the model thread, not on the event loop
        scores, ids = await request.app.state.batchers["search"].submit(view.bundle, (view, item_id, k))
    found = hits(view.bundle, scores, ids, k, exclude=item_id, added=await described(view, ids))
    return NeighborsResponse(model_version=view.bundle.version, query=NeighborQuery(id=item_id), neighbors=found)


async def neighbors_of_upload(request: Request) -> Response:
    """The k indexed images most similar to an uploaded one, embedded by the SimCLR encoder."""
    now = serving(request)  # 503 while no model is loaded
    view = request.app.state.store.view  # the bundle and collection this request answers with, whatever changes meanwhile
    bundle, settings = view.bundle, now.settings
    k = int_query(request, "k", DEFAULT_K, 1, MAX_K)
    data = await receive_upload(request, settings.max_upload_bytes)
    batcher = now.batchers["neighbors"]
    upload = prepare_upload(data, settings.max_image_pixels)
    # decoded, embedded and searched with concurrent requests (model_thread.embed_and_search)
    if view.plain:
        scores, ids = await batcher.submit(bundle, (upload, k))
        return json_response(NeighborsResponse(model_version=bundle.version, query=NeighborQuery(), neighbors=hits(bundle, scores, ids, k)))
    scores, ids = await batcher.submit(bundle, (upload, k, view))
    found = hits(bundle, scores, ids, k, added=await described(view, ids))
    return json_response(NeighborsResponse(model_version=bundle.version, query=NeighborQuery(), neighbors=found))


# An upload route, like /classify: a DirectRoute (service.fastpath), so FastAPI documents it but
# DirectRoutes answers it. GET /neighbors keeps FastAPI's declared parameters.
router.add_api_route(
    "/neighbors",
    neighbors_of_upload,
    methods=["POST"],
    response_model=NeighborsResponse,
    responses=errors(400, 413, 415, 422, 503),
    openapi_extra={**UPLOAD_BODY, "parameters": [int_parameter("k", DEFAULT_K, 1, MAX_K, f"how many neighbours, 1..{MAX_K}")]},
    route_class_override=DirectRoute,
)

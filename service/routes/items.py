"""The collection's items: ``POST /items``, ``GET /items/{id}``, ``DELETE /items/{id}``, ``GET /items``.

Every indexed image is an item (its id, its payload ``{"source", "label"}``); ``POST /items``
adds more, or replaces one, while the service runs, ``DELETE`` removes any. Each write is on
disk (fsync) before it is answered and is searched at once by the process that answered it,
by the others within a second (``service.collection``, ``core.collection``).

Writes need ``Authorization: Bearer <SIMCLR_WRITE_TOKEN>`` (setting ``write_token``): unset,
writes are disabled (403, saying how to enable them); a missing or wrong token is 401 with
``WWW-Authenticate: Bearer``. The token is compared in constant time. Reads are open.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from core.collection import MAX_ID, MAX_PAYLOAD_BYTES, CollectionError, PayloadError, parse_payload, stored_sizes
from service.auth import check_bearer
from service.decoding import prepare_copies
from service.deps import AnyView, SettingsDep, StoreDep, ViewDep, no_item, served_view
from service.fastpath import receive_form, upload_body
from service.schemas import Item, ItemPage, ItemSummary, ItemWritten, errors

DISABLED = "writes are disabled: set SIMCLR_WRITE_TOKEN (the `write_token` setting) to enable POST /items and DELETE /items/{id}"
UNAUTHORIZED = "a valid write token is required: send `Authorization: Bearer <SIMCLR_WRITE_TOKEN>`"
MAX_LIMIT = 1000
INLINE_PAGE_ITEMS = 20_000  # a view's id list sorted on the event loop up to this many items (~0.2 ms)
_ID = re.compile(r"[+-]?\d{1,20}")

bearer = HTTPBearer(auto_error=False, description="the SIMCLR_WRITE_TOKEN of the service")


async def require_write(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    check_bearer(settings.write_token, credentials, disabled=DISABLED, unauthorized=UNAUTHORIZED)


router = APIRouter(tags=["items"])

ITEM_BODY = upload_body(
    id={"type": "integer", "minimum": 0, "maximum": MAX_ID, "description": "replace this item (or add it under this id); absent: the next free id"},
    payload={"type": "object", "description": f"a JSON object, at most {MAX_PAYLOAD_BYTES} bytes as compact JSON"},
)


def form_id(text: str | None) -> int | None:
    """The ``id`` form field: None when absent, else an int in 0..MAX_ID (422 otherwise, an empty value included:
    the contract declares an integer, and a blank is not "the next free id")."""
    if text is None:
        return None
    text = text.strip()
    if not _ID.fullmatch(text):
        raise HTTPException(422, f"invalid request: form field `id`: expected an integer, got {text[:40]!r}")
    value = int(text)
    if not 0 <= value <= MAX_ID:
        raise HTTPException(422, f"invalid request: form field `id`: must be between 0 and {MAX_ID}, got {value}")
    return value


def form_payload(text: str | None) -> dict[str, Any] | None:
    """The ``payload`` form field: None when absent, else a JSON object of at most 16 KB (422 otherwise)."""
    if text is None:
        return None
    try:
        return parse_payload(text)
    except PayloadError as e:
        raise HTTPException(422, f"invalid request: form field `payload`: {e}") from e


@router.post(
    "/items",
    status_code=201,
    response_model=ItemWritten,
    responses={200: {"model": ItemWritten, "description": "item `id` existed and was replaced"},
               **errors(400, 401, 403, 413, 415, 422, 503)},
    openapi_extra=ITEM_BODY,
    dependencies=[Depends(require_write)],
)
async def add_item(request: Request) -> Response:
    """Add an image as a new item (201), or replace item ``id`` (200) with this image and payload.
    Answered once the item is on disk and searched by this process; other processes search it
    within a second. Bad uploads get the same 400/413/415 as the other upload routes."""
    state = request.app.state
    store, settings = state.store, state.settings
    view = served_view(store)  # 503 while no model is loaded
    data, fields = await receive_form(request, settings.max_upload_bytes, ("id", "payload"))
    item_id, payload = form_id(fields.get("id")), form_payload(fields.get("payload"))
    bundle = view.bundle
    size = bundle.manifest.image_size
    batcher = state.batchers["embed"]
    with batcher.incoming():  # a batch being formed waits for this request meanwhile
        copies = await prepare_copies(data, stored_sizes(size), settings.max_image_pixels)
    vector = await batcher.submit(bundle, copies[size])  # the vector POST /embed and /neighbors would compute
    try:
        written = await run_in_threadpool(store.collection.put, item_id, payload, copies, bundle.version, vector)
    except (CollectionError, OSError) as e:  # a damaged log, a full disk: nothing was acknowledged
        raise HTTPException(503, f"the item could not be stored: {e}") from e
    body = ItemWritten(id=written.id, model_version=written.model_version)
    return JSONResponse(body.model_dump(), status_code=201 if written.created else 200)


@router.get("/items", response_model=ItemPage, responses=errors(422, 503))
async def list_items(
    view: ViewDep,
    offset: Annotated[int, Query(ge=0, description="how many live items (in id order) to skip")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"items to return, 1..{MAX_LIMIT}")] = 100,
) -> ItemPage:
    """Live items in id order, ``limit`` from position ``offset``: ids and payloads (browsing, export)."""
    if view.remote:  # Qdrant: network calls
        return await run_in_threadpool(item_page, view, offset, limit)
    if view.has_page_cache() or view.count <= INLINE_PAGE_ITEMS:
        ids = view.page(offset, limit)
    else:  # the first page of a new view sorts every live id: not on the event loop for a big collection
        ids = await run_in_threadpool(view.page, offset, limit)
    items = [ItemSummary(id=i, payload=view.payload(i)) for i in ids]
    return ItemPage(model_version=view.bundle.version, total=view.count, offset=offset, limit=limit, items=items)


def item_page(view: AnyView, offset: int, limit: int) -> ItemPage:
    """GET /items from a remote view (blocking)."""
    ids = view.page(offset, limit)
    items = [ItemSummary(id=i, payload=view.payload(i)) for i in ids]
    return ItemPage(model_version=view.bundle.version, total=view.count, offset=offset, limit=limit, items=items)


def item_of(view: AnyView, item_id: int) -> Item:
    """One live item of ``view`` (blocking for a remote view); 404 if there is none."""
    if not view.has(item_id):
        raise no_item(item_id)
    return Item(id=item_id, payload=view.payload(item_id), image_url=f"/images/{item_id}", model_version=view.bundle.version)


@router.get("/items/{item_id}", response_model=Item, responses=errors(404, 422, 503))
async def get_item(view: ViewDep, item_id: Annotated[int, Path(description="the item's id")]) -> Item:
    """One live item: its payload and where its image is."""
    return await run_in_threadpool(item_of, view, item_id) if view.remote else item_of(view, item_id)


@router.delete("/items/{item_id}", status_code=204, responses=errors(401, 403, 404, 422, 503), dependencies=[Depends(require_write)])
async def delete_item(store: StoreDep, item_id: Annotated[int, Path(description="the item's id")]) -> Response:
    """Delete a live item (an indexed image or an added one): on disk when answered, never in an answer again."""
    served_view(store)  # 503 while no model is loaded
    if not 0 <= item_id <= MAX_ID:
        raise no_item(item_id)
    try:
        version = await run_in_threadpool(store.collection.delete, item_id)
    except (CollectionError, OSError) as e:
        raise HTTPException(503, f"the item could not be deleted: {e}") from e
    if version is None:
        raise no_item(item_id)
    return Response(status_code=204)

"""GET /images/{id}: an item's image as PNG, from the pixels stored in the bundle or the collection."""

from __future__ import annotations

import io
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Path, Query, Request, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool

from service.deps import AnyView, ViewDep, no_item
from service.routes.neighbors import check_id
from service.schemas import errors

router = APIRouter(tags=["images"])


def png(chw: np.ndarray, size: int | None) -> bytes:
    """CHW uint8 pixels to PNG bytes, optionally scaled so the longer side is ``size``."""
    img = Image.fromarray(np.ascontiguousarray(np.asarray(chw).transpose(1, 2, 0)))
    if size is not None and size != max(img.size):
        w, h = img.size
        scale = size / max(w, h)
        # Nearest: a 32-px CIFAR image shown big should look like its pixels, not a blur.
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def image_of(view: AnyView, item_id: int) -> tuple[np.ndarray, str]:
    """A live item's pixels and what identifies them; 404 if there is no such item."""
    if not view.has(item_id):
        raise no_item(item_id)
    try:
        return view.image(item_id)
    except KeyError:  # deleted by another request since ``has``: a Qdrant view is live, not a snapshot
        raise no_item(item_id) from None


@router.get(
    "/images/{item_id}",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "PNG"}, **errors(404, 422, 503)},
)
async def image(
    view: ViewDep,
    request: Request,
    item_id: Annotated[int, Path(description="an item's id: an indexed image's or an added one's")],
    size: Annotated[int | None, Query(ge=32, le=512, description="scale for display (nearest), 32..512 px")] = None,
) -> Response:
    """An item's image: an indexed one's stored pixels, an added one's stored copy (64 px for a 32 px
    model, see ``core.collection``). The same id is a different image in another model version or
    after a replace, so the ETag says which and caches must revalidate (no-cache) rather than reuse blindly."""
    bundle = view.bundle
    if view.plain:
        check_id(bundle, item_id)
        pixels, which = bundle.pixels[item_id], f"{bundle.version}-{item_id}"
    elif view.remote:  # Qdrant: network calls
        pixels, which = await run_in_threadpool(image_of, view, item_id)
    else:
        pixels, which = image_of(view, item_id)  # an added item's: one pread of a few KB
    etag = f'"{which}-{size or 0}"'
    headers = {"ETag": etag, "Cache-Control": "public, no-cache"}
    if etag in (tag.strip() for tag in request.headers.get("if-none-match", "").split(",")):
        return Response(status_code=304, headers=headers)
    # Native size encodes in ~0.1 ms, cheaper inline than a thread hop; upscaled ones in a thread.
    body = png(pixels, None) if size is None else await run_in_threadpool(png, pixels, size)
    return Response(body, media_type="image/png", headers=headers)

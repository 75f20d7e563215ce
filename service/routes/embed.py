"""POST /embed: an uploaded image's embedding, the unit vector the index would hold for it."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.decoding import prepare_upload
from service.fastpath import UPLOAD_BODY, DirectRoute, json_response, receive_upload, serving
from service.schemas import EmbedResponse, errors

# An upload route like /classify: a DirectRoute (service.fastpath), batched with concurrent requests.
router = APIRouter(tags=["model"], route_class=DirectRoute)


@router.post("/embed", response_model=EmbedResponse, responses=errors(400, 413, 415, 422, 503), openapi_extra=UPLOAD_BODY)
async def embed(request: Request) -> Response:
    """The SimCLR embedding of an uploaded image: L2-normalised, computed as the indexed images' were
    (same decoding, resizing and encoder), so its inner product with an indexed vector is their cosine
    similarity and an indexed image's own upload (lossless) gives its stored vector."""
    now = serving(request)  # the bundle this request answers with, whatever a reload does meanwhile
    bundle, settings = now.bundle, now.settings
    data = await receive_upload(request, settings.max_upload_bytes)
    batcher = now.batchers["embed"]
    upload = prepare_upload(data, settings.max_image_pixels)
    vector = await batcher.submit(bundle, upload)  # decoded and embedded with concurrent requests (model_thread.embed)
    return json_response(EmbedResponse(model_version=bundle.version, dim=int(vector.shape[0]), embedding=vector.tolist()))

"""POST /classify: an uploaded image's most probable classes."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, HTTPException, Request, Response

from core.bundles import LoadedBundle
from service.decoding import prepare_upload
from service.fastpath import UPLOAD_BODY, DirectRoute, int_parameter, int_query, json_response, receive_upload, serving
from service.schemas import ClassifyResponse, Prediction, errors

# The throughput route: see service.fastpath for what DirectRoute saves per request.
router = APIRouter(tags=["model"], route_class=DirectRoute)
TOP_K = 3
MAX_TOP_K = 1000  # top_k's declared bound; a model with fewer classes returns them all


def no_classifier(bundle: LoadedBundle) -> str:
    """What 409 says for a model without a classifier: why, and how to get one."""
    return (
        f"model {bundle.version} has no classifier: it was trained on images without labels, so it serves embeddings and "
        "neighbours but cannot classify. To train one, put the images in one subfolder per class (DIR/train/<class>/*.jpg) "
        "and run `simclr finetune --data DIR` then `simclr publish`, or `simclr refresh --data DIR`"
    )


def top_predictions(bundle: LoadedBundle, probs: np.ndarray, top_k: int) -> list[Prediction]:
    """The ``top_k`` most probable classes, most probable first (ties: the lower class id first)."""
    names = bundle.manifest.class_names
    p = probs.tolist()  # a dozen floats: plain Python sorts them faster than numpy's call overhead
    ids = sorted(range(len(p)), key=p.__getitem__, reverse=True)[:top_k]
    return [Prediction(label=names[i], class_id=i, probability=p[i]) for i in ids]


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    responses=errors(400, 409, 413, 415, 422, 503),
    openapi_extra={
        **UPLOAD_BODY,
        "parameters": [int_parameter("top_k", TOP_K, 1, MAX_TOP_K, f"how many classes to return, 1..{MAX_TOP_K}; "
                                     "more than the model has returns them all")],
    },
)
async def classify(request: Request) -> Response:
    """Classify an uploaded image with the fine-tuned head; probabilities are a softmax over all classes.
    409 for a model without a classifier (trained without labels: `/model` says `has_classifier: false`)."""
    now = serving(request)  # the bundle this request answers with, whatever a reload does meanwhile
    bundle, settings = now.bundle, now.settings
    if bundle.classifier is None:
        raise HTTPException(409, no_classifier(bundle))
    # Bounds that do not depend on the model, so the OpenAPI document can declare them; a model's classes cap it.
    top_k = min(int_query(request, "top_k", TOP_K, 1, MAX_TOP_K), len(bundle.manifest.class_names))
    data = await receive_upload(request, settings.max_upload_bytes)
    batcher = now.batchers["classify"]
    upload = prepare_upload(data, settings.max_image_pixels)
    probs = await batcher.submit(bundle, upload)  # decoded and classified with concurrent requests (model_thread.classify)
    return json_response(ClassifyResponse(model_version=bundle.version, predictions=top_predictions(bundle, probs, top_k)))

"""POST /classify: an uploaded image's most probable classes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from fastapi import APIRouter, HTTPException, Request, Response

from service.deps import serving
from service.direct import DirectRoute, int_parameter, int_query, json_response
from service.schemas import ClassifyResponse, Prediction, errors
from service.uploads import UPLOAD_BODY, Upload, on_decoded, prepare_upload, receive_upload
from training.artifacts import LoadedBundle
from training.models import normalize

# The throughput route: see service.direct for what DirectRoute saves per request.
router = APIRouter(tags=["model"], route_class=DirectRoute)
TOP_K = 3


def class_probabilities(bundle: LoadedBundle, uploads: Sequence[Upload]) -> list[np.ndarray | HTTPException]:
    """Softmax probabilities over all classes, one ``(C,)`` row per upload (``(3, H, W)``
    uint8 pixels, or a thumbnail decoded here); an upload that does not decode gets its error.

    One forward pass for the whole batch (eval mode: each row is what the image
    alone would give, within float tolerance). Blocking: the batcher runs it in
    the model thread.
    """

    def forward(pixels: np.ndarray, rows: list[int]) -> list[np.ndarray]:
        with torch.inference_mode():
            logits = bundle.classifier(normalize(torch.from_numpy(pixels)))
            return list(logits.float().softmax(dim=1).numpy())

    return on_decoded(uploads, bundle.manifest.image_size, forward)


def top_predictions(bundle: LoadedBundle, probs: np.ndarray, top_k: int) -> list[Prediction]:
    """The ``top_k`` most probable classes, most probable first (ties: the lower class id first)."""
    names = bundle.manifest.class_names
    p = probs.tolist()  # a dozen floats: plain Python sorts them faster than numpy's call overhead
    ids = sorted(range(len(p)), key=p.__getitem__, reverse=True)[:top_k]
    return [Prediction(label=names[i], class_id=i, probability=p[i]) for i in ids]


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    responses=errors(400, 413, 415, 422, 503),
    openapi_extra={
        **UPLOAD_BODY,
        "parameters": [int_parameter("top_k", TOP_K, 1, "how many classes to return, 1..number of classes")],
    },
)
async def classify(request: Request) -> Response:
    """Classify an uploaded image with the fine-tuned head; probabilities are a softmax over all classes."""
    now = serving(request)  # the bundle this request answers with, whatever a reload does meanwhile
    bundle, settings = now.bundle, now.settings
    n_classes = len(bundle.manifest.class_names)
    top_k = int_query(request, "top_k", TOP_K, 1, n_classes, " (the number of classes)")
    data = await receive_upload(request, settings.max_upload_bytes)
    batcher = now.batchers["classify"]
    with batcher.incoming():  # a batch being formed waits for this request meanwhile
        upload = await prepare_upload(data, bundle.manifest.image_size, settings.max_image_pixels)
    probs = await batcher.submit(bundle, upload)  # decoded and classified with concurrent requests
    return json_response(ClassifyResponse(model_version=bundle.version, predictions=top_predictions(bundle, probs, top_k)))

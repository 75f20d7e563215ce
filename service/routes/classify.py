"""POST /classify: an uploaded image's most probable classes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import numpy as np
import torch
from fastapi import APIRouter, HTTPException, Query, Request

from service.deps import serving
from service.schemas import ClassifyResponse, Prediction, errors
from service.uploads import UPLOAD_BODY, decode_upload, receive_upload
from training.artifacts import LoadedBundle
from training.models import normalize

router = APIRouter(tags=["model"])


def class_probabilities(bundle: LoadedBundle, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Softmax probabilities over all classes, one ``(C,)`` row per ``(3, H, W)`` uint8 image.

    One forward pass for the whole batch (eval mode: each row is what the image
    alone would give, within float tolerance). Blocking: the batcher runs it in
    the model thread.
    """
    with torch.inference_mode():
        logits = bundle.classifier(normalize(torch.from_numpy(np.stack(images))))
        return list(logits.float().softmax(dim=1).numpy())


def top_predictions(bundle: LoadedBundle, probs: np.ndarray, top_k: int) -> list[Prediction]:
    names = bundle.manifest.class_names
    ids = np.argsort(-probs, kind="stable")[:top_k]
    return [Prediction(label=names[i], class_id=int(i), probability=float(probs[i])) for i in ids]


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    responses=errors(400, 413, 415, 422, 503),
    openapi_extra=UPLOAD_BODY,
)
async def classify(
    request: Request,
    top_k: Annotated[int, Query(ge=1, description="how many classes to return, 1..number of classes")] = 3,
) -> ClassifyResponse:
    """Classify an uploaded image with the fine-tuned head; probabilities are a softmax over all classes."""
    now = serving(request)  # the bundle this request answers with, whatever a reload does meanwhile
    bundle, settings = now.bundle, now.settings
    n_classes = len(bundle.manifest.class_names)
    if top_k > n_classes:  # the upper bound depends on the model, so it cannot live in Query()
        raise HTTPException(422, f"top_k must be between 1 and {n_classes} (the number of classes), got {top_k}")
    data = await receive_upload(request, settings.max_upload_bytes)
    batcher = now.batchers["classify"]
    with batcher.incoming():  # a batch being formed waits for this request while it decodes
        pixels = await decode_upload(data, bundle.manifest.image_size, settings.max_image_pixels)
    probs = await batcher.submit(bundle, pixels)  # one forward pass with concurrent requests
    return ClassifyResponse(model_version=bundle.version, predictions=top_predictions(bundle, probs, top_k))

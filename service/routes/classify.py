"""POST /classify: an uploaded image's most probable classes."""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch
from fastapi import APIRouter, File, HTTPException, Query, UploadFile
from starlette.concurrency import run_in_threadpool

from service.deps import BundleDep, SettingsDep
from service.schemas import ClassifyResponse, Prediction, errors
from service.uploads import decode_image, read_upload
from training.artifacts import LoadedBundle
from training.models import normalize

router = APIRouter(tags=["model"])


def predict(bundle: LoadedBundle, pixels: np.ndarray, top_k: int) -> list[Prediction]:
    """The classifier's top-k softmax probabilities for one ``(3, H, W)`` uint8 image. Blocking."""
    with torch.inference_mode():
        logits = bundle.classifier(normalize(torch.from_numpy(pixels).unsqueeze(0)))
        probs, ids = logits.float().softmax(dim=1)[0].topk(top_k)
    names = bundle.manifest.class_names
    return [Prediction(label=names[i], class_id=i, probability=p) for p, i in zip(probs.tolist(), ids.tolist())]


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    responses=errors(400, 413, 415, 422, 503),
)
async def classify(
    bundle: BundleDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="an image in any common format and mode")],
    top_k: Annotated[int, Query(ge=1, description="how many classes to return, 1..number of classes")] = 3,
) -> ClassifyResponse:
    """Classify an uploaded image with the fine-tuned head; probabilities are a softmax over all classes."""
    n_classes = len(bundle.manifest.class_names)
    if top_k > n_classes:  # the upper bound depends on the model, so it cannot live in Query()
        raise HTTPException(422, f"top_k must be between 1 and {n_classes} (the number of classes), got {top_k}")
    data = await read_upload(file, settings.max_upload_bytes)
    size, max_pixels = bundle.manifest.image_size, settings.max_image_pixels

    def work() -> list[Prediction]:  # decode + forward in one thread hop, off the event loop
        return predict(bundle, decode_image(data, size, max_pixels), top_k)

    return ClassifyResponse(model_version=bundle.version, predictions=await run_in_threadpool(work))

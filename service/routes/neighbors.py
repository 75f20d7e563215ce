"""GET /neighbors (by indexed id) and POST /neighbors (by upload): the most similar indexed images."""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch
from fastapi import APIRouter, File, HTTPException, Query, UploadFile
from starlette.concurrency import run_in_threadpool

from index.embed import embed
from index.faiss_index import reconstruct, search
from service.deps import BundleDep, SettingsDep
from service.schemas import Neighbor, NeighborQuery, NeighborsResponse, errors
from service.uploads import decode_image, read_upload
from training.artifacts import LoadedBundle

router = APIRouter(tags=["model"])

K = Query(ge=1, le=100, description="how many neighbours, 1..100")


def check_id(bundle: LoadedBundle, item_id: int) -> None:
    """404 for an id outside the index (negative ids included: numpy would wrap them around)."""
    size = bundle.index.ntotal
    if not 0 <= item_id < size:
        raise HTTPException(404, f"no indexed image with id {item_id}; ids are 0..{size - 1}")


def neighbors(bundle: LoadedBundle, query: np.ndarray, k: int, exclude: int | None = None) -> list[Neighbor]:
    """The k best hits for one embedding, without ``exclude`` (the query itself, when it is indexed)."""
    scores, ids = search(bundle.index, query, k if exclude is None else k + 1)
    names = bundle.manifest.class_names
    out = []
    for score, i in zip(scores[0].tolist(), ids[0].tolist()):
        # Dropped by id, not by rank: a duplicate image can tie with the query and come first.
        if i < 0 or i == exclude or len(out) == k:
            continue
        label = int(bundle.labels[i])
        out.append(
            Neighbor(
                id=i,
                label=names[label] if label >= 0 else None,
                score=score,
                image_url=f"/images/{i}",
                source=bundle.sources[i],
            )
        )
    return out


@router.get("/neighbors", response_model=NeighborsResponse, responses=errors(404, 422, 503))
async def neighbors_of_id(
    bundle: BundleDep,
    item_id: Annotated[int, Query(alias="id", description="an indexed image's id, 0..index size - 1")],
    k: Annotated[int, K] = 5,
) -> NeighborsResponse:
    """The k indexed images most similar to indexed image ``id``, not counting itself."""
    check_id(bundle, item_id)
    # On the event loop on purpose: exact search of one query over tens of thousands of
    # vectors takes about a millisecond, less than a hop to the threadpool and back.
    hits = neighbors(bundle, reconstruct(bundle.index, item_id), k, exclude=item_id)
    return NeighborsResponse(model_version=bundle.version, query=NeighborQuery(id=item_id), neighbors=hits)


@router.post("/neighbors", response_model=NeighborsResponse, responses=errors(400, 413, 415, 422, 503))
async def neighbors_of_upload(
    bundle: BundleDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="an image in any common format and mode")],
    k: Annotated[int, K] = 5,
) -> NeighborsResponse:
    """The k indexed images most similar to an uploaded one, embedded by the SimCLR encoder."""
    data = await read_upload(file, settings.max_upload_bytes)
    size, max_pixels = bundle.manifest.image_size, settings.max_image_pixels

    def work() -> list[Neighbor]:  # decode + embed + search in one thread hop, off the event loop
        pixels = torch.from_numpy(decode_image(data, size, max_pixels)).unsqueeze(0)
        return neighbors(bundle, embed(bundle.encoder, pixels), k)

    return NeighborsResponse(model_version=bundle.version, query=NeighborQuery(), neighbors=await run_in_threadpool(work))

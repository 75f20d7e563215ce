"""Response bodies. Declared as pydantic models so that /docs shows the real shapes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from core.bundles import Manifest


class ErrorResponse(BaseModel):
    detail: str = Field(description="what was wrong with the request, or why the service cannot answer")


class Prediction(BaseModel):
    label: str
    class_id: int
    probability: float


class ClassifyResponse(BaseModel):
    model_version: str
    predictions: list[Prediction] = Field(description="most probable first")


class NeighborQuery(BaseModel):
    id: int | None = Field(None, description="the indexed image asked about; null for an upload")


class Neighbor(BaseModel):
    id: int
    label: str | None = Field(description="class name, null for an unlabelled item")
    score: float = Field(description="inner product of unit embeddings = cosine similarity")
    image_url: str
    source: str = Field(description="the trainer's file for an indexed image; `items/<id>` for an added one")
    payload: dict[str, Any] | None = Field(
        None, description="the item's payload: an added item's own (null if none), `{source, label}` for the trainer's images"
    )


class NeighborsResponse(BaseModel):
    model_version: str
    query: NeighborQuery
    neighbors: list[Neighbor] = Field(description="most similar first")


class ItemWritten(BaseModel):
    id: int = Field(description="the item's id: the one sent, or the one the service assigned")
    model_version: str = Field(description="the version the item is now searched under")


class Item(BaseModel):
    id: int
    payload: dict[str, Any] | None = Field(description="the item's JSON object (null if it has none)")
    image_url: str
    model_version: str


class ItemSummary(BaseModel):
    id: int
    payload: dict[str, Any] | None


class ItemPage(BaseModel):
    model_version: str
    total: int = Field(description="live items in all")
    offset: int
    limit: int
    items: list[ItemSummary] = Field(description="in id order: items offset .. offset + limit - 1 of the live ones")


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    model_version: str
    last_error: str | None = Field(
        None, description="why the version CURRENT names is not served (the served one keeps answering); null if none"
    )


class ReloadResult(BaseModel):
    model_version: str | None = Field(description="the version served after the check; null if none")
    reloaded: bool = Field(description="a new version was loaded and swapped in by this call")
    last_error: str | None = Field(description="why the version CURRENT names could not be loaded; null if none")


class ModelInfo(Manifest):
    """The served bundle's manifest, plus ``model_version`` like every other answer."""

    model_version: str  # and the manifest's has_classifier: false for a model trained without labels (POST /classify: 409)


class EmbedResponse(BaseModel):
    model_version: str
    dim: int = Field(description="the embedding's length")
    embedding: list[float] = Field(description="the unit vector (L2 norm 1) the index would hold for the image: inner product = cosine")


# For the `responses=` of routes, so /docs lists the error statuses too.
def errors(*codes: int) -> dict[int | str, dict[str, object]]:
    return {code: {"model": ErrorResponse} for code in codes}

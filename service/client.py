"""A typed Python client for the service's HTTP API, on httpx.

    from service.client import SimCLRClient, SimCLRError

    with SimCLRClient("http://localhost:8000", token="my-write-token") as client:
        print(client.model().model_version)
        hit = client.neighbors(image="photo.jpg", k=5).neighbors[0]
        vector = client.embed("photo.jpg").embedding          # unit length, as the index holds it
        added = client.add("photo.jpg", payload={"album": "2024"})
        client.get(added.id).payload                          # {"album": "2024"}
        client.delete(added.id)
        try:
            client.classify("photo.jpg")
        except SimCLRError as e:                              # every failure, with the HTTP status
            print(e.status, e.detail)                         # e.g. 409 for a model without a classifier

An ``image`` argument is the encoded bytes of any format the service accepts, a path to
such a file (``str`` or ``os.PathLike``), an open binary file, or a PIL image (sent as PNG,
losslessly). Answers are pydantic models mirroring the JSON (unknown fields are ignored, so a
newer server does not break an older client). Every error is a :class:`SimCLRError` with the
HTTP ``status`` (None when no answer came: connection refused, timeout) and the server's
``detail``.

This module imports only httpx, pydantic and the standard library (no torch, faiss or
FastAPI), so it can be used, or copied, wherever the service's API is called from.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol

import httpx
from pydantic import BaseModel, Field


class SavesImage(Protocol):
    """A PIL image, as far as the client needs one (PIL itself is not imported)."""

    mode: str

    def save(self, fp: IO[bytes], format: str | None = None) -> None: ...


# Encoded bytes, a path, an open binary file, or a PIL image.
ImageInput = bytes | bytearray | memoryview | str | os.PathLike[str] | IO[bytes] | SavesImage


class SimCLRError(Exception):
    """A request that did not succeed: ``status`` is the HTTP status (None if no answer came),
    ``detail`` the server's ``{"detail": ...}`` (or what went wrong on the way)."""

    def __init__(self, status: int | None, detail: str) -> None:
        super().__init__(f"{status}: {detail}" if status is not None else detail)
        self.status = status
        self.detail = detail


# --- answers (the JSON bodies of service.schemas, without importing the service) ---------------


class Prediction(BaseModel):
    label: str
    class_id: int
    probability: float


class Classification(BaseModel):
    model_version: str
    predictions: list[Prediction] = Field(description="most probable first")


class Neighbor(BaseModel):
    id: int
    score: float = Field(description="cosine similarity of the unit embeddings")
    image_url: str
    label: str | None = None
    source: str | None = None
    payload: dict[str, Any] | None = None


class NeighborQuery(BaseModel):
    id: int | None = None


class Neighbors(BaseModel):
    model_version: str
    query: NeighborQuery
    neighbors: list[Neighbor] = Field(description="most similar first")


class Embedding(BaseModel):
    model_version: str
    dim: int
    embedding: list[float] = Field(description="L2 norm 1: inner product = cosine similarity")


class Added(BaseModel):
    id: int
    model_version: str
    created: bool = Field(True, description="a new item (201); false when it replaced item `id` (200)")


class Item(BaseModel):
    id: int
    payload: dict[str, Any] | None = None
    image_url: str
    model_version: str


class ItemSummary(BaseModel):
    id: int
    payload: dict[str, Any] | None = None


class ItemPage(BaseModel):
    """One page of ``GET /items``: live items ``offset`` .. ``offset + limit - 1``, in id order."""

    model_version: str
    total: int = Field(description="live items in all")
    offset: int
    limit: int
    items: list[ItemSummary]


class IndexInfo(BaseModel):
    kind: str  # exact, hnsw or ivf
    metric: str
    size: int
    dim: int
    encoder_fingerprint: str
    params: dict[str, int] = {}  # an approximate index's: M, efConstruction, efSearch or nlist, nprobe
    recall_at_10: float | None = None  # measured against exact search when it was built; None: exact
    target_recall: float | None = None


class ModelInfo(BaseModel):
    model_version: str
    has_classifier: bool = True
    class_names: list[str]
    image_size: int
    backbone: dict[str, Any]
    index: IndexInfo
    metrics: dict[str, float] = {}
    metrics_split: str | None = None
    created: str | None = None
    run_id: str | None = None


# --- the client ---------------------------------------------------------------------------------


def _upload(image: ImageInput) -> tuple[str, bytes]:
    """(file name, bytes) of an ``image`` argument."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return "image", bytes(image)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        try:
            return path.name, path.read_bytes()
        except OSError as e:
            raise SimCLRError(None, f"cannot read the image file {path}: {e}") from e
    if hasattr(image, "read"):
        data = image.read()
        if isinstance(data, str):
            raise SimCLRError(None, "the image file is open in text mode: open it with 'rb'")
        return Path(str(getattr(image, "name", "image"))).name or "image", bytes(data)
    if hasattr(image, "save") and hasattr(image, "mode"):  # a PIL image, without importing PIL
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return "image.png", buf.getvalue()
    raise TypeError(f"image must be bytes, a path, a binary file or a PIL image, not {type(image).__name__}")


class SimCLRClient:
    """The service at ``base_url``. ``token``: the write token (``SIMCLR_WRITE_TOKEN``), sent as
    ``Authorization: Bearer`` with every request; reads need none. Use it as a context manager,
    or call :meth:`close`. ``transport`` is passed to httpx (tests use ``httpx.MockTransport``)."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0, *,
                 transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url, timeout=timeout, headers=headers, transport=transport)

    def __enter__(self) -> SimCLRClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as e:  # connection refused, timeouts, a broken answer
            raise SimCLRError(None, f"{method} {path}: {type(e).__name__}: {e}") from e
        if response.is_success:
            return response
        try:
            detail = response.json()["detail"]
        except (ValueError, KeyError, TypeError):
            detail = response.text.strip() or response.reason_phrase
        raise SimCLRError(response.status_code, detail if isinstance(detail, str) else json.dumps(detail))

    def _upload(self, path: str, image: ImageInput, params: dict[str, Any] | None = None,
                data: dict[str, str] | None = None) -> httpx.Response:
        name, content = _upload(image)
        return self._request("POST", path, params=params, data=data, files={"file": (name, content, "application/octet-stream")})

    # --- the model ---

    def model(self) -> ModelInfo:
        """The served model: version, backbone, image size, classes (none without a classifier), index."""
        return ModelInfo.model_validate(self._request("GET", "/model").json())

    def classify(self, image: ImageInput, top_k: int = 3) -> Classification:
        """The ``top_k`` most probable classes. A model trained without labels has no classifier: 409."""
        return Classification.model_validate(self._upload("/classify", image, {"top_k": top_k}).json())

    def neighbors(self, id: int | None = None, image: ImageInput | None = None, k: int = 5) -> Neighbors:
        """The ``k`` indexed images most similar to indexed item ``id`` (itself excluded), or to ``image``."""
        if (id is None) == (image is None):
            raise TypeError("pass exactly one of id= and image=")
        if id is not None:
            return Neighbors.model_validate(self._request("GET", "/neighbors", params={"id": id, "k": k}).json())
        return Neighbors.model_validate(self._upload("/neighbors", image, {"k": k}).json())

    def embed(self, image: ImageInput) -> Embedding:
        """The image's unit embedding, as the index would hold it."""
        return Embedding.model_validate(self._upload("/embed", image).json())

    def image(self, id: int, size: int | None = None) -> bytes:
        """An indexed image as PNG bytes (``size``: its longer side scaled to this, 32..512)."""
        return self._request("GET", f"/images/{id}", params={"size": size} if size is not None else None).content

    # --- the collection (writes need the token) ---

    def add(self, image: ImageInput, id: int | None = None, payload: dict[str, Any] | None = None) -> Added:
        """Add ``image`` as a new item (the server picks the id), or replace item ``id``; ``payload``
        is any JSON object (at most 16 KB)."""
        data = {}
        if id is not None:
            data["id"] = str(id)
        if payload is not None:
            data["payload"] = json.dumps(payload)
        response = self._upload("/items", image, data=data or None)
        return Added.model_validate({**response.json(), "created": response.status_code == 201})

    def get(self, id: int) -> Item:
        """Item ``id``: its payload and image URL."""
        return Item.model_validate(self._request("GET", f"/items/{id}").json())

    def delete(self, id: int) -> None:
        """Delete item ``id``; it never appears in an answer again."""
        self._request("DELETE", f"/items/{id}")

    def list(self, offset: int = 0, limit: int = 100) -> ItemPage:
        """Items ``offset`` .. ``offset + limit - 1`` in id order: ids and payloads."""
        return ItemPage.model_validate(self._request("GET", "/items", params={"offset": offset, "limit": limit}).json())

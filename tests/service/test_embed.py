"""POST /embed over TCP: the unit vector the index holds for an image, batched like /classify, and the upload errors."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import faiss
import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import Bundle
from service_testkit import MAX_IMAGE_PIXELS, MAX_UPLOAD_BYTES, chw_png, encode, photo, png_header_only


def stored_vectors(bundle: Bundle) -> np.ndarray:
    index = faiss.read_index(str(bundle.home / "models" / bundle.version / "index.faiss"))
    return index.reconstruct_n(0, index.ntotal)


def embed(client: httpx.Client, data: bytes) -> httpx.Response:
    return client.post("/embed", files={"file": ("upload.png", data, "image/png")})


def test_an_indexed_image_embeds_to_its_stored_vector(client: httpx.Client, bundle: Bundle) -> None:
    stored = stored_vectors(bundle)
    for item in (0, 17, len(bundle.images) - 1):
        r = embed(client, chw_png(bundle.images[item]))
        assert r.status_code == 200, r.text
        body = r.json()
        assert list(body) == ["model_version", "dim", "embedding"] and body["model_version"] == bundle.version
        vector = np.asarray(body["embedding"], dtype=np.float32)
        assert body["dim"] == len(vector) == stored.shape[1]
        assert abs(np.linalg.norm(vector) - 1) < 1e-5
        np.testing.assert_allclose(vector, stored[item], atol=1e-4)


def test_concurrent_embeddings_are_batched_and_each_its_own(server, bundle: Bundle) -> None:
    stored = stored_vectors(bundle)
    items = list(range(24))

    def one(item: int) -> np.ndarray:
        with server.client() as c:
            r = embed(c, chw_png(bundle.images[item]))
            assert r.status_code == 200, r.text
            return np.asarray(r.json()["embedding"], dtype=np.float32)

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(one, items))
    np.testing.assert_allclose(np.stack(got), stored[items], atol=1e-4)


def test_a_photo_of_any_size_embeds(client: httpx.Client) -> None:
    r = client.post("/embed", files={"file": ("p.jpg", encode(photo(640, 480), "JPEG"), "image/jpeg")})  # decoded in the threadpool
    assert r.status_code == 200 and abs(np.linalg.norm(r.json()["embedding"]) - 1) < 1e-5


@pytest.mark.parametrize(
    ("data", "status", "word"),
    [
        (b"", 400, "empty"),
        (encode(photo(), "PNG")[:60], 400, "PNG"),
        (b"plain text, not an image\n" * 20, 415, "not an image"),
        (b"\xff\xd8\xff" + b"\0" * MAX_UPLOAD_BYTES, 413, "too large"),
        (png_header_only(10_000, 10_000), 413, "pixels"),
        (encode(Image.new("L", (int(MAX_IMAGE_PIXELS**0.5) + 10,) * 2), "PNG"), 413, "pixels"),
    ],
    ids=["empty", "broken", "not-an-image", "too-many-bytes", "pixel-bomb", "too-many-pixels"],
)
def test_bad_uploads(client: httpx.Client, data: bytes, status: int, word: str) -> None:
    r = embed(client, data)
    assert r.status_code == status and word.lower() in r.json()["detail"].lower(), r.text


def test_a_missing_file_field_is_422(client: httpx.Client) -> None:
    r = client.post("/embed")
    assert r.status_code == 422 and "file" in r.json()["detail"]
    r = client.post("/embed", files={"image": ("x.png", encode(photo(), "PNG"), "image/png")})  # another field's name
    assert r.status_code == 422 and "`file`" in r.json()["detail"]

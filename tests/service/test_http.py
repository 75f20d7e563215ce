"""The HTTP contract, end to end over TCP against ``python -m service`` (see conftest.py)."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from service_testkit import (
    CLASS_NAMES,
    MAX_IMAGE_PIXELS,
    MAX_UPLOAD_BYTES,
    chw_png,
    encode,
    photo,
    png_header_only,
    uploads,
)

UPLOADS = uploads()


def post_file(client: httpx.Client, path: str, data: bytes, ctype: str = "image/png", **params: object) -> httpx.Response:
    return client.post(path, params=params, files={"file": ("upload", data, ctype)})


def assert_error(r: httpx.Response, status: int, *words: str) -> None:
    """The right status, the contract's JSON shape, and a detail that names the problem."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    detail = r.json()["detail"]
    assert isinstance(detail, str)
    for word in words:
        assert word.lower() in detail.lower(), f"{word!r} not in {detail!r}"


# --- health, readiness, model, docs ---------------------------------------------------------


def test_healthz_readyz_model(client: httpx.Client, bundle) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "model_version": bundle.version, "last_error": None}
    model = client.get("/model").json()
    assert model["model_version"] == model["version"] == bundle.version
    assert model["class_names"] == CLASS_NAMES
    assert model["image_size"] == 32 and model["index"]["size"] == len(bundle.images)
    assert model["backbone"] == {"arch": "resnet18", "width": 8, "expand": 0, "stem": "cifar"}
    assert model["has_classifier"] is True


def test_docs_and_openapi(client: httpx.Client) -> None:
    assert "swagger" in client.get("/docs").text.lower()
    spec = client.get("/openapi.json").json()
    documented = {"/classify", "/neighbors", "/embed", "/images/{item_id}", "/healthz", "/readyz", "/model", "/metrics", "/admin/reload"}
    assert documented <= set(spec["paths"])
    assert "ClassifyResponse" in spec["components"]["schemas"]
    classify = spec["paths"]["/classify"]["post"]  # a DirectRoute: documented by hand, answered like the rest
    assert [p["name"] for p in classify["parameters"]] == ["top_k"]
    assert "multipart/form-data" in classify["requestBody"]["content"]
    assert classify["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ClassifyResponse"}
    upload = spec["paths"]["/neighbors"]["post"]  # a DirectRoute too; GET /neighbors is a plain FastAPI route
    assert [p["name"] for p in upload["parameters"]] == ["k"] and "multipart/form-data" in upload["requestBody"]["content"]
    assert {p["name"] for p in spec["paths"]["/neighbors"]["get"]["parameters"]} == {"id", "k"}


# --- classify ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(UPLOADS))
def test_classify_any_mode_and_format(client: httpx.Client, bundle, kind: str) -> None:
    data, ctype = UPLOADS[kind]
    r = post_file(client, "/classify", data, ctype)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == bundle.version
    preds = body["predictions"]
    assert len(preds) == 3  # the default top_k
    probs = [p["probability"] for p in preds]
    assert probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs)
    for p in preds:
        assert p["label"] == CLASS_NAMES[p["class_id"]]


def test_classify_top_k(client: httpx.Client) -> None:
    data, ctype = UPLOADS["png"]
    assert len(post_file(client, "/classify", data, top_k=1).json()["predictions"]) == 1
    preds = post_file(client, "/classify", data, top_k=len(CLASS_NAMES)).json()["predictions"]
    assert sorted(p["class_id"] for p in preds) == list(range(len(CLASS_NAMES)))
    assert sum(p["probability"] for p in preds) == pytest.approx(1.0, abs=1e-4)
    more = post_file(client, "/classify", data, top_k=1000).json()["predictions"]  # the declared bound: every class
    assert [p["class_id"] for p in more] == [p["class_id"] for p in preds]


def test_exif_orientation_is_applied(client: httpx.Client) -> None:
    """The EXIF-rotated JPEG classifies like its upright twin, not like the unrotated pixels."""
    upright = encode(photo().transpose(Image.Transpose.ROTATE_270), "JPEG")
    raw = encode(photo(), "JPEG")
    k = len(CLASS_NAMES)
    probs = {
        name: np.array([
            p["probability"] for p in sorted(post_file(client, "/classify", data, top_k=k).json()["predictions"], key=lambda p: p["class_id"])
        ])
        for name, data in (("exif", UPLOADS["exif_rotated_jpeg"][0]), ("upright", upright), ("raw", raw))
    }
    assert np.abs(probs["exif"] - probs["upright"]).sum() < np.abs(probs["exif"] - probs["raw"]).sum()


# --- neighbors -----------------------------------------------------------------------------------


def test_neighbors_by_id(client: httpx.Client, bundle) -> None:
    r = client.get("/neighbors", params={"id": 5, "k": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == bundle.version and body["query"] == {"id": 5}
    hits = body["neighbors"]
    ids = [h["id"] for h in hits]
    assert len(hits) == 7 and 5 not in ids and len(set(ids)) == 7
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True) and all(-1.0001 <= s <= 1.0001 for s in scores)
    for h in hits:
        label = int(bundle.labels[h["id"]])
        assert h["label"] == (CLASS_NAMES[label] if label >= 0 else None)
        assert h["image_url"] == f"/images/{h['id']}" and h["source"] == f"generated/{h['id']:04d}.png"
    assert len(client.get("/neighbors", params={"id": 0}).json()["neighbors"]) == 5  # default k
    assert len(client.get("/neighbors", params={"id": 0, "k": 100}).json()["neighbors"]) == 100


def test_neighbor_image_url_serves_the_png(client: httpx.Client, bundle) -> None:
    hit = client.get("/neighbors", params={"id": 3, "k": 1}).json()["neighbors"][0]
    r = client.get(hit["image_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    got = np.asarray(Image.open(io.BytesIO(r.content)))
    assert np.array_equal(got, bundle.images[hit["id"]].transpose(1, 2, 0))


@pytest.mark.parametrize("item", [17, 199])  # 199 is the unlabelled item
def test_neighbors_by_upload_finds_itself(client: httpx.Client, bundle, item: int) -> None:
    r = post_file(client, "/neighbors", chw_png(bundle.images[item]), k=4)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == bundle.version and body["query"] == {"id": None}
    first = body["neighbors"][0]
    assert len(body["neighbors"]) == 4
    assert first["id"] == item and first["score"] == pytest.approx(1.0, abs=1e-4)
    assert first["label"] == (CLASS_NAMES[item % 10] if item != 199 else None)


def test_neighbors_by_upload_any_format(client: httpx.Client) -> None:
    for kind in ("jpeg", "cmyk_jpeg", "16bit_png", "rgba_png"):
        data, ctype = UPLOADS[kind]
        assert len(post_file(client, "/neighbors", data, ctype).json()["neighbors"]) == 5, kind


# --- images -----------------------------------------------------------------------------------


def test_images(client: httpx.Client, bundle) -> None:
    r = client.get("/images/42")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), bundle.images[42].transpose(1, 2, 0))
    etag = r.headers["etag"]
    assert bundle.version in etag and "no-cache" in r.headers["cache-control"]
    again = client.get("/images/42", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.headers["etag"] == etag
    big = client.get("/images/42", params={"size": 128})
    img = Image.open(io.BytesIO(big.content))
    assert img.size == (128, 128)
    # Nearest-neighbour upscaling: every source pixel becomes a 4x4 block.
    assert np.array_equal(np.asarray(img)[::4, ::4], bundle.images[42].transpose(1, 2, 0))
    assert big.headers["etag"] != etag


# --- bad input: right status, JSON detail naming the problem, never a 500 ------------------------


def test_not_an_image_is_415(client: httpx.Client) -> None:
    assert_error(post_file(client, "/classify", b"this is plain text, not an image\n" * 20, "image/png"), 415, "not an image")
    assert_error(post_file(client, "/neighbors", b"%PDF-1.4 nope", "application/pdf"), 415, "not an image")


def test_broken_images_are_400(client: httpx.Client) -> None:
    jpeg = encode(photo(320, 240), "JPEG")
    assert_error(post_file(client, "/classify", jpeg[: len(jpeg) // 2], "image/jpeg"), 400, "JPEG", "truncated")
    assert_error(post_file(client, "/classify", jpeg[:300], "image/jpeg"), 400, "JPEG")  # cut inside the header
    assert_error(post_file(client, "/neighbors", jpeg[:3] + b"garbage" * 10, "image/jpeg"), 400, "JPEG")
    png = UPLOADS["png"][0]
    assert_error(post_file(client, "/classify", png[:60]), 400, "PNG")


def test_empty_upload_is_400(client: httpx.Client) -> None:
    assert_error(post_file(client, "/classify", b""), 400, "empty")
    assert_error(post_file(client, "/neighbors", b""), 400, "empty")


def test_missing_file_field_is_422(client: httpx.Client) -> None:
    assert_error(client.post("/classify"), 422, "file")
    assert_error(client.post("/neighbors", files={"image": ("x.png", UPLOADS["png"][0], "image/png")}), 422, "file")
    assert_error(client.post("/classify", data={"file": "not a file"}), 422, "file")
    # multipart, but `file` is a plain form value rather than an upload
    plain = b'--x\r\nContent-Disposition: form-data; name="file"\r\n\r\nnot a file\r\n--x--\r\n'
    r = client.post("/classify", content=plain, headers={"content-type": "multipart/form-data; boundary=x"})
    assert_error(r, 422, "file", "uploaded file")


def test_malformed_multipart_is_400(client: httpx.Client) -> None:
    broken = b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n\x89PNG--y--garbage'
    r = client.post("/classify", content=broken + b"\r\n--", headers={"content-type": "multipart/form-data; boundary=x"})
    assert_error(r, 400, "malformed multipart")  # cut short: the image inside is incomplete
    r = client.post("/neighbors", content=b"no boundary here", headers={"content-type": "multipart/form-data; boundary=x"})
    assert_error(r, 400, "malformed multipart")


def test_too_many_bytes_is_413(client: httpx.Client) -> None:
    just_over = b"\xff\xd8\xff" + b"\0" * MAX_UPLOAD_BYTES  # checked by the route, chunk by chunk
    assert_error(post_file(client, "/classify", just_over, "image/jpeg"), 413, "too large", str(MAX_UPLOAD_BYTES))
    far_over = b"\0" * (3 * MAX_UPLOAD_BYTES)  # refused from Content-Length, body unread
    assert_error(post_file(client, "/neighbors", far_over), 413, "too large")

    def chunked():  # no Content-Length: refused once the bytes received pass the limit
        yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        for _ in range(40):
            yield b"\0" * 8192

    r = client.post("/classify", content=chunked(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert_error(r, 413, "too large")


def test_too_many_pixels_is_413(client: httpx.Client) -> None:
    side = int(MAX_IMAGE_PIXELS**0.5) + 10
    big = encode(Image.new("L", (side, side)), "PNG")  # a few kB of bytes, over the pixel limit
    assert len(big) < MAX_UPLOAD_BYTES
    assert_error(post_file(client, "/classify", big), 413, "pixels")
    assert_error(post_file(client, "/neighbors", png_header_only(10_000, 10_000)), 413, "pixels")
    # Past PIL's own decompression-bomb limit, Image.open itself refuses.
    assert_error(post_file(client, "/classify", png_header_only(20_000, 20_000)), 413, "too large")


@pytest.mark.parametrize(
    ("method", "path", "params", "word"),
    [
        ("post", "/classify", {"top_k": 0}, "top_k"),
        ("post", "/classify", {"top_k": 1001}, "top_k"),
        ("post", "/classify", {"top_k": "three"}, "top_k"),
        ("post", "/neighbors", {"k": 0}, "`k`"),
        ("post", "/neighbors", {"k": 101}, "`k`"),
        ("get", "/neighbors", {"id": 1, "k": 0}, "`k`"),
        ("get", "/neighbors", {"id": 1, "k": 101}, "`k`"),
        ("get", "/neighbors", {"k": 5}, "`id`"),
        ("get", "/neighbors", {"id": "abc"}, "`id`"),
        ("get", "/images/1", {"size": 8}, "size"),
        ("get", "/images/1", {"size": 1000}, "size"),
        ("get", "/images/abc", {}, "item_id"),
    ],
)
def test_bad_parameters_are_422(client: httpx.Client, method: str, path: str, params: dict, word: str) -> None:
    if method == "post":
        r = post_file(client, path, UPLOADS["png"][0], **params)
    else:
        r = client.get(path, params=params)
    assert_error(r, 422, word)


@pytest.mark.parametrize("item", [-1, 200, 10**30])
def test_unknown_id_is_404(client: httpx.Client, item: int) -> None:
    assert_error(client.get("/neighbors", params={"id": item}), 404, "no indexed image", str(item))
    assert_error(client.get(f"/images/{item}"), 404, "no indexed image")


def test_concurrent_requests(client: httpx.Client, server) -> None:
    data = UPLOADS["jpeg"][0]

    def one(i: int) -> int:
        with server.client() as c:
            if i % 2:
                return post_file(c, "/classify", data, "image/jpeg").status_code
            return c.get("/neighbors", params={"id": i}).status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, range(16))) == [200] * 16


def test_server_survived_everything(client: httpx.Client, server) -> None:
    """Runs last: after all the bad requests the process is up, answering, and never hit a 500."""
    assert server.process.poll() is None
    assert client.get("/healthz").status_code == 200
    assert post_file(client, "/classify", UPLOADS["png"][0]).status_code == 200
    log = server.log_text()
    assert "Traceback" not in log and '" 500' not in log, log[-3000:]

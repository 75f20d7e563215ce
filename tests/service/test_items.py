"""The collection's HTTP contract (routes/items.py, service/collection.py) over TCP against ``python -m service``:
add, get, list, replace and delete items with payloads; neighbours include added items and never deleted ones;
the write token; bad input. One server with writes enabled, on its own copy of the test home."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import N_IMAGES, Bundle, make_images
from service_testkit import CLASS_NAMES, MAX_IMAGE_PIXELS, MAX_UPLOAD_BYTES, Server, chw_png, encode, photo, start_server, stop_server

WRITE_TOKEN = "w-s3cret"
AUTH = {"Authorization": f"Bearer {WRITE_TOKEN}"}
NEW = make_images(12, seed=77)[0]  # images that are not in the bundle


@pytest.fixture(scope="module", params=["faiss", "qdrant"])
def backend(request: pytest.FixtureRequest) -> str:
    """Every test here runs against both collection backends: FAISS in process and Qdrant (embedded local mode)."""
    return request.param


@pytest.fixture(scope="module")
def items_server(bundle: Bundle, backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp(f"items-{backend}")
    shutil.copytree(bundle.home, tmp / "home")
    extra = {"SIMCLR_INDEX_BACKEND": "qdrant", "SIMCLR_QDRANT_PATH": str(tmp / "qdrant")} if backend == "qdrant" else {}
    s = start_server(tmp / "home", tmp / "server.log", SIMCLR_WRITE_TOKEN=WRITE_TOKEN, SIMCLR_RELOAD_INTERVAL="0",
                     SIMCLR_MAX_UPLOAD_BYTES=str(MAX_UPLOAD_BYTES), SIMCLR_MAX_IMAGE_PIXELS=str(MAX_IMAGE_PIXELS), **extra)
    yield s
    stop_server(s)


def assert_new_id(backend: str, item_id: int, sequential: int) -> None:
    """FAISS hands out the next id after the highest ever used; Qdrant (replicas share no counter) a random one >= 2**32."""
    assert item_id == sequential if backend == "faiss" else 2**32 <= item_id < 2**53


@pytest.fixture(scope="module")
def c(items_server: Server) -> Iterator[httpx.Client]:
    with items_server.client() as client:
        yield client


def add(client: httpx.Client, image: bytes, *, item_id: int | None = None, payload: object = None,
        headers: dict[str, str] | None = None, ctype: str = "image/png") -> httpx.Response:
    data = {}
    if item_id is not None:
        data["id"] = str(item_id)
    if payload is not None:
        data["payload"] = payload if isinstance(payload, str) else json.dumps(payload)
    return client.post("/items", data=data, files={"file": ("upload", image, ctype)}, headers=AUTH if headers is None else headers)


def search(client: httpx.Client, image: bytes, k: int = 5) -> list[dict]:
    r = client.post("/neighbors", params={"k": k}, files={"file": ("q.png", image, "image/png")})
    assert r.status_code == 200, r.text
    return r.json()["neighbors"]


def assert_error(r: httpx.Response, status: int, *words: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    detail = r.json()["detail"]
    for word in words:
        assert word.lower() in detail.lower(), f"{word!r} not in {detail!r}"


def base_payload(bundle: Bundle, i: int) -> dict:
    label = int(bundle.labels[i])
    return {"source": f"generated/{i:04d}.png", "label": CLASS_NAMES[label] if label >= 0 else None}


def test_add_get_list_and_delete(c: httpx.Client, bundle: Bundle, backend: str) -> None:
    r = add(c, chw_png(NEW[0]))
    assert r.status_code == 201, r.text
    first = r.json()["id"]
    assert_new_id(backend, first, N_IMAGES)  # FAISS: the next id after the bundle's 0..N-1
    assert r.json() == {"id": first, "model_version": bundle.version}
    payload = {"album": "holidays 2024", "tags": ["sea", "ünïcode"], "rating": 4.5, "nested": {"ok": True, "none": None}}
    second = add(c, chw_png(NEW[1]), payload=payload).json()["id"]
    assert_new_id(backend, second, N_IMAGES + 1)

    assert c.get(f"/items/{first}").json() == {"id": first, "payload": None, "image_url": f"/images/{first}",
                                               "model_version": bundle.version}
    assert c.get(f"/items/{second}").json()["payload"] == payload  # round trip, exactly
    assert c.get("/items/3").json()["payload"] == base_payload(bundle, 3)  # the trainer's images are items too
    png = c.get(f"/images/{second}")  # an added item's image: its stored 64 px copy
    assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).size == (64, 64)

    page = c.get("/items", params={"offset": N_IMAGES - 2, "limit": 10}).json()
    assert page["model_version"] == bundle.version and page["offset"] == N_IMAGES - 2 and page["limit"] == 10
    added = sorted([{"id": first, "payload": None}, {"id": second, "payload": payload}], key=lambda i: i["id"])
    assert page["items"] == [{"id": N_IMAGES - 2, "payload": base_payload(bundle, N_IMAGES - 2)},
                             {"id": N_IMAGES - 1, "payload": base_payload(bundle, N_IMAGES - 1)}, *added]
    assert page["total"] == N_IMAGES + 2
    assert [i["id"] for i in c.get("/items").json()["items"]] == list(range(100))  # default: the first 100

    assert c.delete(f"/items/{first}", headers=AUTH).status_code == 204
    for path in (f"/items/{first}", f"/images/{first}", f"/neighbors?id={first}"):
        assert_error(c.get(path), 404, str(first))
    assert_error(c.delete(f"/items/{first}", headers=AUTH), 404, "no item")
    assert first not in [i["id"] for i in c.get("/items", params={"offset": N_IMAGES - 2}).json()["items"]]
    # A deleted id is never handed out again.
    third = add(c, chw_png(NEW[2])).json()["id"]
    assert_new_id(backend, third, N_IMAGES + 2)
    assert third not in (first, second)


def test_replace_by_id(c: httpx.Client, bundle: Bundle) -> None:
    r = add(c, chw_png(NEW[3]), item_id=5, payload={"v": 1})  # one of the trainer's images
    assert r.status_code == 200 and r.json() == {"id": 5, "model_version": bundle.version}
    assert c.get("/items/5").json()["payload"] == {"v": 1}
    png = np.asarray(Image.open(io.BytesIO(c.get("/images/5").content)))
    assert png.shape == (64, 64, 3)  # the new image, not the bundle's 32 px one
    hits = search(c, chw_png(NEW[3]))
    assert hits[0]["id"] == 5 and hits[0]["score"] == pytest.approx(1.0, abs=1e-4) and hits[0]["payload"] == {"v": 1}
    assert all(not (h["id"] == 5 and h["score"] > 0.99998) for h in search(c, chw_png(bundle.images[5]), k=20))  # old vector gone

    new_id = 9_000_000
    assert add(c, chw_png(NEW[4]), item_id=new_id, payload={"v": 1}).status_code == 201  # an id of the client's choosing
    r = add(c, chw_png(NEW[5]), item_id=new_id, payload={"v": 2})
    assert r.status_code == 200 and c.get(f"/items/{new_id}").json()["payload"] == {"v": 2}
    assert search(c, chw_png(NEW[5]))[0]["id"] == new_id
    assert new_id not in [h["id"] for h in search(c, chw_png(NEW[4]), k=100) if h["score"] > 0.99998]
    ids = [i["id"] for i in c.get("/items", params={"offset": 0, "limit": 1000}).json()["items"]]
    assert ids == sorted(ids) and ids.count(new_id) == 1 and ids.count(5) == 1


def test_neighbours_include_added_items_with_payloads_and_never_deleted_ones(c: httpx.Client, bundle: Bundle) -> None:
    item = add(c, chw_png(NEW[6]), payload={"name": "six"}).json()["id"]
    first = search(c, chw_png(NEW[6]))[0]
    assert first["id"] == item and first["score"] == pytest.approx(1.0, abs=1e-4)
    assert first["payload"] == {"name": "six"} and first["label"] is None and first["image_url"] == f"/images/{item}"

    by_id = c.get("/neighbors", params={"id": item, "k": 7}).json()  # an added item as the query
    assert by_id["query"] == {"id": item} and len(by_id["neighbors"]) == 7 and item not in [h["id"] for h in by_id["neighbors"]]
    for h in by_id["neighbors"]:
        assert h["payload"] == c.get(f"/items/{h['id']}").json()["payload"]
        if h["id"] < N_IMAGES and h["id"] != 5:  # 5 was replaced
            assert h["payload"] == base_payload(bundle, h["id"]) and h["source"] == f"generated/{h['id']:04d}.png"

    # The added item is among the neighbours of the bundle items nearest to it (the precomputed table merged).
    nearest_base = next(h["id"] for h in by_id["neighbors"] if h["id"] < N_IMAGES and h["id"] != 5)
    assert item in [h["id"] for h in c.get("/neighbors", params={"id": nearest_base, "k": 100}).json()["neighbors"]]

    # Delete bundle items that are neighbours of item 0: they disappear from every answer, k is still met.
    gone = [h["id"] for h in c.get("/neighbors", params={"id": 0, "k": 3}).json()["neighbors"]]
    for i in gone:
        assert c.delete(f"/items/{i}", headers=AUTH).status_code == 204
    for k in (5, 100):
        hits = c.get("/neighbors", params={"id": 0, "k": k}).json()["neighbors"]
        assert len(hits) == k and not set(gone) & {h["id"] for h in hits}
    for i in gone:
        assert all(h["id"] != i for h in search(c, chw_png(bundle.images[i]), k=100))
        assert_error(c.get(f"/items/{i}"), 404)
        assert_error(c.get(f"/images/{i}"), 404)
        assert_error(c.get("/neighbors", params={"id": i}), 404)
    assert c.delete(f"/items/{item}", headers=AUTH).status_code == 204
    assert all(h["id"] != item for h in search(c, chw_png(NEW[6]), k=100))
    total = c.get("/items").json()["total"]
    hits = c.get("/neighbors", params={"id": 1, "k": 100}).json()["neighbors"]
    assert len(hits) == min(100, total - 1) and all(c.get(f"/items/{h['id']}").status_code == 200 for h in hits[:10])


def test_writes_need_the_write_token(c: httpx.Client, client: httpx.Client) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {WRITE_TOKEN}x"}, {"Authorization": WRITE_TOKEN}):
        r = add(c, chw_png(NEW[7]), headers=headers)
        assert_error(r, 401, "SIMCLR_WRITE_TOKEN")
        assert r.headers["www-authenticate"] == "Bearer"
        assert_error(c.delete("/items/1", headers=headers), 401)
    assert c.get("/items/1").status_code == 200  # nothing was deleted; reads need no token
    # The session's default server has no SIMCLR_WRITE_TOKEN: writes are disabled, reads open.
    assert_error(add(client, chw_png(NEW[7]), headers={}), 401, "SIMCLR_WRITE_TOKEN", "enable")  # no credentials: 401, saying how
    assert_error(add(client, chw_png(NEW[7])), 403, "SIMCLR_WRITE_TOKEN", "enable")  # credentials while writes are disabled
    assert_error(client.delete("/items/1", headers=AUTH), 403, "SIMCLR_WRITE_TOKEN")
    assert client.get("/items/1").status_code == 200 and client.get("/items").json()["total"] == N_IMAGES


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"payload": "[1, 2]"}, ["payload", "object"]),
        ({"payload": '"text"'}, ["payload", "object"]),
        ({"payload": "{not json"}, ["payload", "JSON"]),
        ({"payload": json.dumps({"big": "x" * 16_400})}, ["payload", "limit"]),
        ({"id": "-1"}, ["`id`", "between 0"]),
        ({"id": "seven"}, ["`id`", "integer"]),
        ({"id": ""}, ["`id`", "integer"]),  # blank is not "the next free id": leave the field out for that
        ({"id": str(2**53)}, ["`id`", "between 0"]),
    ],
)
def test_bad_id_or_payload_is_422(c: httpx.Client, fields: dict[str, str], words: list[str]) -> None:
    before = c.get("/items").json()["total"]
    r = c.post("/items", data=fields, files={"file": ("a.png", chw_png(NEW[8]), "image/png")}, headers=AUTH)
    assert_error(r, 422, *words)
    assert c.get("/items").json()["total"] == before


def test_bad_uploads_get_the_upload_routes_answers(c: httpx.Client) -> None:
    assert_error(c.post("/items", data={"payload": "{}"}, headers=AUTH), 422, "file")
    assert_error(add(c, b""), 400, "empty")
    assert_error(add(c, b"plain text, not an image\n" * 10), 415, "not an image")
    jpeg = encode(photo(320, 240), "JPEG")
    assert_error(add(c, jpeg[: len(jpeg) // 2], ctype="image/jpeg"), 400, "JPEG")
    assert_error(add(c, b"\xff\xd8\xff" + b"\0" * MAX_UPLOAD_BYTES, ctype="image/jpeg"), 413, "too large")
    side = int(MAX_IMAGE_PIXELS**0.5) + 10
    assert_error(add(c, encode(Image.new("L", (side, side)), "PNG")), 413, "pixels")
    # A payload sent as a file part (curl -F payload=@meta.json) is read like a plain field.
    r = c.post("/items", files={"file": ("a.png", chw_png(NEW[9]), "image/png"), "payload": ("m.json", b'{"from": "file"}', "application/json")},
               headers=AUTH)
    assert r.status_code == 201 and c.get(f"/items/{r.json()['id']}").json()["payload"] == {"from": "file"}
    photo_id = add(c, encode(photo(300, 200), "JPEG"), ctype="image/jpeg").json()["id"]  # a big photo: decoded in the threadpool
    assert c.get(f"/items/{photo_id}").status_code == 200


@pytest.mark.parametrize(("path", "params"), [("/items", {"limit": 0}), ("/items", {"limit": 1001}), ("/items", {"offset": -1}),
                                             ("/items/abc", {})])
def test_bad_list_parameters_are_422(c: httpx.Client, path: str, params: dict) -> None:
    assert_error(c.get(path, params=params), 422)


def test_unknown_ids_are_404(c: httpx.Client) -> None:
    for i in (-1, 10**6, 10**30):
        assert_error(c.get(f"/items/{i}"), 404, "no item", str(i))
        assert_error(c.delete(f"/items/{i}", headers=AUTH), 404, "no item")
    assert "Traceback" not in c.get("/healthz").text


def test_a_field_sent_twice_is_422_not_its_first_value(c: httpx.Client) -> None:
    png = chw_png(NEW[10])
    before = c.get("/items").json()["total"]
    r = c.post("/items", data={"id": ["7", "8"]}, files={"file": ("a.png", png, "image/png")}, headers=AUTH)
    assert_error(r, 422, "`id`", "more than once")
    r = c.post("/items", files=[("file", ("a.png", png, "image/png")), ("file", ("b.png", png, "image/png"))], headers=AUTH)
    assert_error(r, 422, "`file`", "more than once")
    assert_error(c.post("/neighbors", files=[("file", ("a.png", png, "image/png")), ("file", ("b.png", png, "image/png"))]),
                 422, "more than once")
    assert c.get("/items").json()["total"] == before

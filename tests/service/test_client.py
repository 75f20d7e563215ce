"""service.client.SimCLRClient against the live server (``python -m service`` over TCP), and its error mapping."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import faiss
import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import Bundle
from service.client import Added, SimCLRClient, SimCLRError
from service_testkit import CLASS_NAMES, REPO, Server, chw_png, encode, photo, start_server, stop_server
from tests_support import free_port


@pytest.fixture(scope="module")
def sdk(server: Server) -> Iterator[SimCLRClient]:
    with SimCLRClient(server.url) as c:
        yield c


def test_importing_the_client_loads_no_torch_faiss_or_fastapi() -> None:
    code = ("import sys; import service.client; "
            "print(sorted(m for m in ('torch', 'faiss', 'fastapi', 'numpy', 'PIL', 'starlette') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_model(sdk: SimCLRClient, bundle: Bundle) -> None:
    info = sdk.model()
    assert info.model_version == bundle.version and info.has_classifier and info.class_names == CLASS_NAMES
    assert info.image_size == 32 and info.index.size == len(bundle.images) and info.backbone["stem"] == "cifar"


def test_classify_takes_bytes_a_path_a_file_or_a_pil_image(sdk: SimCLRClient, client: httpx.Client, bundle: Bundle, tmp_path: Path) -> None:
    png = chw_png(bundle.images[3])
    raw = client.post("/classify", params={"top_k": 2}, files={"file": ("q.png", png, "image/png")}).json()
    got = sdk.classify(png, top_k=2)
    assert got.model_dump() == raw and len(got.predictions) == 2 and got.predictions[0].label in CLASS_NAMES
    path = tmp_path / "q.png"
    path.write_bytes(png)
    assert sdk.classify(path, top_k=2) == got and sdk.classify(str(path), top_k=2) == got
    with open(path, "rb") as f:
        assert sdk.classify(f, top_k=2) == got
    assert sdk.classify(Image.open(io.BytesIO(png)), top_k=2) == got  # sent as PNG: lossless, the same pixels


def test_neighbors_by_id_and_by_image(sdk: SimCLRClient, client: httpx.Client, bundle: Bundle) -> None:
    by_id = sdk.neighbors(id=3, k=4)
    raw = client.get("/neighbors", params={"id": 3, "k": 4}).json()
    assert [(n.id, n.score, n.label) for n in by_id.neighbors] == [(n["id"], n["score"], n["label"]) for n in raw["neighbors"]]
    assert by_id.query.id == 3 and len(by_id.neighbors) == 4 and 3 not in [n.id for n in by_id.neighbors]
    by_image = sdk.neighbors(image=chw_png(bundle.images[3]), k=4)
    assert by_image.query.id is None and by_image.neighbors[0].id == 3 and by_image.neighbors[0].image_url == "/images/3"
    with pytest.raises(TypeError, match="exactly one"):
        sdk.neighbors(k=3)
    with pytest.raises(TypeError, match="exactly one"):
        sdk.neighbors(id=1, image=b"x")


def test_embed_and_image(sdk: SimCLRClient, bundle: Bundle) -> None:
    index = faiss.read_index(str(bundle.home / "models" / bundle.version / "index.faiss"))
    e = sdk.embed(chw_png(bundle.images[5]))
    assert e.model_version == bundle.version and e.dim == index.d
    np.testing.assert_allclose(np.asarray(e.embedding, dtype=np.float32), index.reconstruct(5), atol=1e-4)
    png = sdk.image(5)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))).transpose(2, 0, 1), bundle.images[5])
    assert Image.open(io.BytesIO(sdk.image(5, size=64))).size == (64, 64)


@pytest.mark.parametrize(
    ("call", "status", "words"),
    [
        (lambda c: c.neighbors(id=10_000), 404, ["10000"]),
        (lambda c: c.image(-1), 404, ["-1"]),
        (lambda c: c.neighbors(id=0, k=0), 422, ["`k`"]),
        (lambda c: c.classify(chw_png(np.zeros((3, 32, 32), np.uint8)), top_k=1001), 422, ["top_k"]),
        (lambda c: c.classify(b"plain text, not an image\n" * 20), 415, ["not an image"]),
        (lambda c: c.embed(b""), 400, ["empty"]),
    ],
    ids=["404-neighbors", "404-image", "422-k", "422-top_k", "415", "400"],
)
def test_errors_carry_the_status_and_detail(sdk: SimCLRClient, call, status: int, words: list[str]) -> None:
    with pytest.raises(SimCLRError) as e:
        call(sdk)
    assert e.value.status == status and isinstance(e.value.detail, str)
    for word in words:
        assert word in e.value.detail
    assert str(status) in str(e.value)


def test_409_for_a_model_without_classifier(label_free_server: Server) -> None:
    with SimCLRClient(label_free_server.url) as c:
        assert not c.model().has_classifier
        with pytest.raises(SimCLRError) as e:
            c.classify(chw_png(np.zeros((3, 64, 64), np.uint8)))
    assert e.value.status == 409 and "no classifier" in e.value.detail


def test_no_answer_is_an_error_too(tmp_path: Path) -> None:
    with SimCLRClient(f"http://127.0.0.1:{free_port()}", timeout=2) as c, pytest.raises(SimCLRError) as e:
        c.model()
    assert e.value.status is None and "ConnectError" in e.value.detail
    with SimCLRClient("http://x") as c, pytest.raises(SimCLRError, match="cannot read the image file"):
        c.embed(tmp_path / "missing.png")
    with SimCLRClient("http://x") as c, pytest.raises(TypeError, match="bytes, a path"):
        c.embed(12345)


# --- the collection, on a writable copy of the label-free model's home ---------------------------

WRITE_TOKEN = "client-write-token"


@pytest.fixture(scope="module")
def writable_server(label_free_home, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("client-items")
    shutil.copytree(label_free_home.home, tmp / "home")
    s = start_server(tmp / "home", tmp / "server.log", SIMCLR_WRITE_TOKEN=WRITE_TOKEN, SIMCLR_RELOAD_INTERVAL="0")
    yield s
    stop_server(s)


def test_add_get_list_replace_delete_and_search(writable_server: Server) -> None:
    mine, other = encode(photo(120, 90), "PNG"), encode(photo(90, 120).rotate(90), "PNG")
    with SimCLRClient(writable_server.url, token=WRITE_TOKEN) as c:
        n = c.model().index.size
        added = c.add(mine, payload={"album": "holiday", "tags": ["beach"]})
        assert added == Added(id=n, model_version=c.model().model_version, created=True)  # the next free id
        assert c.get(n).payload == {"album": "holiday", "tags": ["beach"]} and c.get(n).image_url
        hit = c.neighbors(image=mine, k=3).neighbors[0]
        assert hit.id == n and hit.payload == {"album": "holiday", "tags": ["beach"]} and hit.score == pytest.approx(1, abs=1e-4)
        assert n in [h.id for h in c.neighbors(id=0, k=n).neighbors]  # searched from an indexed item too

        assert c.add(other, id=n, payload={"album": "work"}).created is False  # replaced: 200
        assert c.get(n).payload == {"album": "work"} and c.neighbors(image=other, k=1).neighbors[0].id == n
        assert c.add(other, id=n + 10).id == n + 10 and c.get(n + 10).payload is None

        page = c.list(offset=n - 2, limit=5)
        assert page.total == n + 2 and page.offset == n - 2 and page.limit == 5
        assert [i.id for i in page.items] == [n - 2, n - 1, n, n + 10]  # id order
        trainers = page.items[0].payload  # the trainer's images: {source, label}, no label without classes
        assert set(trainers) == {"source", "label"} and trainers["source"].startswith("train/truck-") and trainers["label"] is None

        assert c.delete(n) is None
        with pytest.raises(SimCLRError) as e:
            c.get(n)
        assert e.value.status == 404
        with pytest.raises(SimCLRError) as e:
            c.delete(n)
        assert e.value.status == 404
        assert n not in [h.id for h in c.neighbors(image=mine, k=10).neighbors]
        with pytest.raises(SimCLRError) as e:
            c.add(mine, id=-1)
        assert e.value.status == 422 and "`id`" in e.value.detail
    for token in (None, "wrong"):
        with SimCLRClient(writable_server.url, token=token) as anonymous:
            assert anonymous.get(n + 10).id == n + 10  # reads are open
            with pytest.raises(SimCLRError) as e:
                anonymous.add(mine)
            assert e.value.status == 401 and "SIMCLR_WRITE_TOKEN" in e.value.detail

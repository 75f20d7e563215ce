"""Approximate indexes in the service: an HNSW bundle served over TCP (recorded in /model, searched in the model
thread, items added and deleted), and in process: deletes never come back, added items sealed into their own HNSW
index while searches and writes go on."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import N_IMAGES, make_images, random_run
from core.bundles import LoadedBundle, load_bundle, sha256_file
from core.home import ArtifactHome
from core.index_files import write_index_dir
from core.models import embed
from index.faiss_index import HNSW, build, search
from service import collection as collection_module
from service.collection import LiveCollection, View
from service_testkit import CLASS_NAMES, Server, chw_png, metric, start_server, stop_server

WRITE_TOKEN = "w-approx"
AUTH = {"Authorization": f"Bearer {WRITE_TOKEN}"}


def clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, d)).astype(np.float32)
    x = centres[rng.integers(0, 20, n)] + 0.7 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def hnsw_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A bundle over the test images whose index is HNSW (as ``simclr index --index hnsw`` writes it)."""
    images, labels = make_images(N_IMAGES)
    run = random_run(tmp_path_factory.mktemp("hnsw-run"), images, labels, seed=3)
    vectors = embed(run.encoder, torch.from_numpy(images)).numpy()
    built = build(vectors, HNSW, target_recall=0.99)
    write_index_dir(run.index_dir, built.index, kind=built.kind, encoder_fingerprint=sha256_file(run.encoder_file),
                    params=built.params, recall_at_10=built.recall_at_10, target_recall=0.99, build_seconds=built.build_seconds,
                    labels=labels.tolist(), sources=[f"generated/{i:04d}.png" for i in range(N_IMAGES)], classes=CLASS_NAMES,
                    pixels=images)
    home = tmp_path_factory.mktemp("hnsw-home")
    run.publish(home)
    return home, vectors


@pytest.fixture(scope="module")
def hnsw_server(hnsw_home: tuple[Path, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # No neighbour table: every GET /neighbors?id= searches the HNSW index.
    s = start_server(hnsw_home[0], tmp_path_factory.mktemp("hnsw-logs") / "server.log", SIMCLR_WRITE_TOKEN=WRITE_TOKEN,
                     SIMCLR_NEIGHBOR_TABLE_MAX_ITEMS="0", SIMCLR_RELOAD_INTERVAL="0")
    yield s
    stop_server(s)


def test_model_shows_the_kind_its_parameters_and_the_measured_recall(hnsw_server: Server) -> None:
    with hnsw_server.client() as c:
        index = c.get("/model").json()["index"]
    assert index["kind"] == "hnsw" and index["size"] == N_IMAGES
    assert index["params"]["M"] == 32 and index["params"]["efSearch"] >= 16
    assert index["target_recall"] == 0.99 and 0.0 < index["recall_at_10"] <= 1.0


def test_neighbors_by_id_are_searched_in_the_model_thread_and_match_the_index(hnsw_server: Server,
                                                                               hnsw_home: tuple[Path, np.ndarray]) -> None:
    home, vectors = hnsw_home
    bundle = load_bundle(ArtifactHome(home).bundle_dir(ArtifactHome(home).current_version()))
    with hnsw_server.client() as c:
        before = metric(c.get("/metrics").text, "simclr_batch_size_count", kind="search")
        for item in (0, 7, 123):
            got = [h["id"] for h in c.get("/neighbors", params={"id": item, "k": 5}).json()["neighbors"]]
            _, ids = search(bundle.index, vectors[item], 6)
            assert got == [i for i in ids[0].tolist() if i != item][:5]
        after = metric(c.get("/metrics").text, "simclr_batch_size_count", kind="search")
    assert after - before == 3  # never on the event loop: each one went through the search batcher


def test_added_items_are_found_and_deleted_ones_never_again(hnsw_server: Server) -> None:
    new = make_images(3, seed=91)[0]
    with hnsw_server.client() as c:
        ids = []
        for img in new:
            r = c.post("/items", files={"file": ("x.png", chw_png(img), "image/png")}, data={"payload": '{"tag": "new"}'}, headers=AUTH)
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        hits = c.post("/neighbors", params={"k": 1}, files={"file": ("x.png", chw_png(new[1]), "image/png")}).json()["neighbors"]
        assert hits[0]["id"] == ids[1] and hits[0]["payload"] == {"tag": "new"}
        near = [h["id"] for h in c.get("/neighbors", params={"id": 10, "k": 20}).json()["neighbors"]]
        for gone in near[:5]:
            assert c.delete(f"/items/{gone}", headers=AUTH).status_code == 204
        assert c.delete(f"/items/{ids[0]}", headers=AUTH).status_code == 204
        for item in [10, *near[5:8], ids[2]]:
            found = [h["id"] for h in c.get("/neighbors", params={"id": item, "k": 100}).json()["neighbors"]]
            assert not set(found) & {*near[:5], ids[0]} and len(found) == 100
        assert [h["id"] for h in c.get("/neighbors", params={"id": 10, "k": 15}).json()["neighbors"]][:10] == near[5:15]


# --- in process: the views over an HNSW bundle and the sealed added items --------------------------------------


@pytest.fixture()
def hnsw_bundle(hnsw_home: tuple[Path, np.ndarray]) -> LoadedBundle:
    home = ArtifactHome(hnsw_home[0])
    return replace(load_bundle(home.bundle_dir(home.current_version())), id_neighbors=None)


def wait_sealed(live: LiveCollection, views: list[View], rows: int, timeout: float = 30.0) -> View:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sealed = views[-1].rows.sealed
        if sealed is not None and sealed.rows >= rows:
            return views[-1]
        time.sleep(0.02)
    raise AssertionError(f"no sealed index over {rows} rows within {timeout} s")


def test_added_items_are_sealed_into_an_hnsw_index_that_deletes_never_leak_from(
        hnsw_bundle: LoadedBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dim = hnsw_bundle.index.d
    monkeypatch.setattr(collection_module, "SEAL_MACS", 300 * dim)  # seal past 300 exactly-searched rows
    views: list[View] = []
    live = LiveCollection(tmp_path / "collection", views.append)
    live.switch(hnsw_bundle)
    pixels = {32: np.zeros((3, 32, 32), np.uint8)}
    vectors, queries = np.split(clustered(950, dim, seed=5), [900])  # queries: the same distribution, not added
    ids = [live.put(None, {"n": i}, pixels, hnsw_bundle.version, v).id for i, v in enumerate(vectors)]
    view = wait_sealed(live, views, 301)
    assert view.rows.sealed is not None and view.rows.unsealed() < len(ids)
    # Every added item finds itself first, sealed or not; the sealed rows are searched approximately.
    found_self = sum(int(view.search(v, 1)[1][0] == i) for i, v in zip(ids, vectors))
    assert found_self >= 0.98 * len(ids)
    # Delete a third of the added items (sealed ones among them) and a few bundle items: never returned again.
    deleted = set(ids[::3]) | {0, 1, 2}
    for i in sorted(deleted):
        assert live.delete(i) == hnsw_bundle.version
    view = views[-1]
    for q in queries:
        _, got = view.search(q, 50)
        assert not deleted & set(got.tolist()) and len(got) == 50
    # Recall of the merged search against brute force over the live items stays high.
    live_ids = [i for i in ids if i not in deleted] + [i for i in range(hnsw_bundle.index.ntotal) if i not in deleted]
    live_vectors = np.stack([view.vector(i) for i in live_ids])
    hits = 0
    for q in queries:
        want = {live_ids[j] for j in np.argsort(-(live_vectors @ q))[:10]}
        hits += len(want & set(view.search(q, 10)[1].tolist()))
    assert hits / 500 >= 0.9
    live.close()

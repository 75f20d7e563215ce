"""Replicas sharing one Qdrant (service/qdrant_collection.py), in process: two QdrantCollections on one client
stand for two service replicas on one cluster (the HTTP contract is test_items.py's, run on both backends).
A version's collection is filled once, writes through either replica are searched by both at once, the alias
moves with the newest version, a write through a replica still on the old version reaches the new one."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from conftest import Bundle, make_images, random_run
from core.bundles import LoadedBundle, load_bundle
from core.home import ArtifactHome
from service.model_thread import embeddings as embed_pixels
from service.qdrant_collection import QdrantCollection, QdrantView, connect
from service.settings import Settings

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # local mode warns that it is not for production


def versions(bundle: Bundle, tmp_path: Path) -> tuple[LoadedBundle, LoadedBundle]:
    home = Path(shutil.copytree(bundle.home, tmp_path / "home"))
    second = random_run(tmp_path / "run", bundle.images, bundle.labels, seed=11).publish(home)
    return load_bundle(home / "models" / bundle.version), load_bundle(ArtifactHome(home).bundle_dir(second))


def test_two_replicas_share_one_collection_across_a_new_version(bundle: Bundle, tmp_path: Path) -> None:
    v1, v2 = versions(bundle, tmp_path)
    client = QdrantClient(path=str(tmp_path / "qdrant"))
    served: dict[str, list[QdrantView]] = {"a": [], "b": []}
    a = QdrantCollection(client, "photos", served["a"].append)
    b = QdrantCollection(client, "photos", served["b"].append)
    a.switch(v1)
    fills = client.count("photos-" + v1.version).count
    b.switch(v1)  # finds the collection filled and ready: no second fill
    assert served["b"][-1].name == served["a"][-1].name == f"photos-{v1.version}" and client.count(served["b"][-1].name).count == fills
    aliases = {x.alias_name: x.collection_name for x in client.get_aliases().aliases}
    assert aliases["photos"] == f"photos-{v1.version}"

    images = make_images(3, seed=123)[0]
    copies = {32: images[0], 64: np.kron(images[0], np.ones((1, 2, 2), np.uint8))}
    written = a.put(None, {"who": "a"}, copies, v1.version, embed_pixels(v1, images[0][None])[0])
    view_b = served["b"][-1]
    scores, ids = view_b.search(embed_pixels(v1, images[0][None])[0], 1)  # written through A, searched through B at once
    assert ids.tolist() == [written.id] and scores[0] == pytest.approx(1.0, abs=1e-4)
    assert view_b.payload(written.id) == {"who": "a"} and view_b.added_payloads([written.id, 0]) == {written.id: {"who": "a"}}

    a.switch(v2)  # A moves first; B still serves v1 and writes through it
    assert {x.alias_name: x.collection_name for x in client.get_aliases().aliases}["photos"] == f"photos-{v2.version}"
    copies2 = {32: images[1], 64: np.kron(images[1], np.ones((1, 2, 2), np.uint8))}
    late = b.put(None, {"who": "b"}, copies2, v1.version, embed_pixels(v1, images[1][None])[0])
    assert b.delete(3) == v1.version
    b.switch(v2)  # catches up what it wrote under v1 since v2's collection was filled
    view = served["b"][-1]
    assert view.name == served["a"][-1].name == f"photos-{v2.version}"
    for item_id, image in ((written.id, images[0]), (late.id, images[1])):
        scores, ids = view.search(embed_pixels(v2, image[None])[0], 1)  # embedded by v2's encoder
        assert ids.tolist() == [item_id] and scores[0] == pytest.approx(1.0, abs=1e-4)
    assert not view.has(3) and not served["a"][-1].has(3)  # the tombstone holds in the new version
    assert view.count == len(bundle.images) - 1 + 2
    stored, _ = view.image(late.id)
    assert stored.shape == (3, 64, 64)  # the larger stored copy, from the items collection
    client.close()


def test_the_embedded_client_takes_concurrent_writes_and_searches(tmp_path: Path) -> None:
    """Qdrant's embedded mode grows a collection's point arrays without a lock: concurrent upserts leave
    them at different lengths and every later search fails (qdrant-client issue #1193). The service
    calls it from the threadpool, the model thread and the loader thread at once: connect() serializes it."""
    client = connect(Settings(index_backend="qdrant", qdrant_path=tmp_path / "qdrant"))(lambda view: None).client
    client.create_collection("t", vectors_config=qm.VectorParams(size=8, distance=qm.Distance.DOT))
    errors: list[Exception] = []

    def writer(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for batch in range(20):
                points = [qm.PointStruct(id=seed * 1000 + batch * 10 + i, vector=rng.random(8).tolist()) for i in range(10)]
                client.upsert("t", points, wait=True)
                client.query_points("t", query=[1.0] * 8, limit=5)
        except Exception as e:  # noqa: BLE001 - collected, asserted below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:2]
    assert client.count("t", exact=True).count == 8 * 20 * 10
    assert len(client.scroll("t", limit=2000)[0]) == 8 * 20 * 10

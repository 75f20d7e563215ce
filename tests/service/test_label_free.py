"""A user's own photos, end to end: ``simclr refresh --image-size 64`` on a folder of loose images (no labels)
-> a model without classifier -> served -> POST /embed, POST /neighbors, GET /neighbors; /classify is 409."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from conftest import LABEL_FREE_TOKEN
from core.bundles import load_current
from core.datasets import load_split
from core.home import ArtifactHome
from service.client import SimCLRClient, SimCLRError
from service_testkit import Server, chw_png, encode, photo


def test_refresh_skips_fine_tuning_and_publishes_a_64px_model_without_classifier(label_free_home) -> None:
    assert "skipping fine-tuning" in label_free_home.output and "no class subfolders" in label_free_home.output
    bundle = load_current(ArtifactHome(label_free_home.home))
    assert bundle is not None and bundle.classifier is None
    m = bundle.manifest
    assert not m.has_classifier and m.class_names == [] and set(m.weights) == {"encoder"}
    assert m.image_size == 64 and m.backbone["stem"] == "stride2" and m.metrics_split == "none"
    assert np.asarray(bundle.pixels).shape == (48, 3, 64, 64) and (bundle.labels == -1).all()
    assert not (ArtifactHome(label_free_home.home).bundle_dir(m.version) / "classifier.pt").exists()


def test_the_decoded_image_cache_keys_on_the_size(label_free_home, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    shutil.copytree(label_free_home.home / "data", data_dir)
    cached = sorted((data_dir / "cache").glob("train-*.pt"))
    assert len(cached) == 1 and torch.load(cached[0], weights_only=True)["images"].shape == (48, 3, 64, 64)
    src = str(label_free_home.data)
    assert load_split(src, "train", data_dir=data_dir, image_size=64).images.shape == (48, 3, 64, 64)
    assert sorted((data_dir / "cache").glob("train-*.pt")) == cached  # read from the cache, not decoded again
    assert load_split(src, "train", data_dir=data_dir, image_size=32).images.shape == (48, 3, 32, 32)
    assert len(list((data_dir / "cache").glob("train-*.pt"))) == 2  # another size: another entry


def test_a_label_free_model_serves_embeddings_and_neighbours(label_free_home, label_free_server: Server) -> None:
    bundle = load_current(ArtifactHome(label_free_home.home))
    pixels = np.asarray(bundle.pixels)
    assert bundle.sources[35] == "train/photo-3.png"
    with SimCLRClient(label_free_server.url) as client:
        info = client.model()
        assert info.model_version == bundle.version and not info.has_classifier and info.class_names == [] and info.image_size == 64
        for item in (0, 35, 47):  # 32 px CIFAR images (0, 47) and a 96x72 photo (35, sorted among them), stored at 64 px
            query = chw_png(pixels[item])
            e = client.embed(query)
            vector = np.asarray(e.embedding, dtype=np.float32)
            assert e.model_version == bundle.version and e.dim == len(vector) == bundle.index.d
            assert abs(np.linalg.norm(vector) - 1) < 1e-5
            np.testing.assert_allclose(vector, bundle.index.reconstruct(item), atol=1e-4)
            found = client.neighbors(image=query, k=5)
            assert found.neighbors[0].id == item and found.neighbors[0].score == pytest.approx(1, abs=1e-4)
            by_id = client.neighbors(id=item, k=5)
            assert len(by_id.neighbors) == 5 and item not in [n.id for n in by_id.neighbors]
            assert all(n.label is None for n in by_id.neighbors)  # no labels anywhere
        big = encode(photo(300, 200), "JPEG")  # any size: resized and centre-cropped to 64 px, as the training images were
        assert client.embed(big).dim == bundle.index.d and len(client.neighbors(image=big, k=3).neighbors) == 3

        with pytest.raises(SimCLRError) as e:
            client.classify(chw_png(pixels[0]))
        assert e.value.status == 409
        assert "no classifier" in e.value.detail and "simclr finetune" in e.value.detail and "simclr refresh" in e.value.detail
    r = httpx.post(label_free_server.url + "/classify", files={"file": ("x.png", chw_png(pixels[0]), "image/png")})
    assert r.status_code == 409 and list(r.json()) == ["detail"]
    assert httpx.get(label_free_server.url + "/readyz").json()["model_version"] == bundle.version


def test_a_label_free_model_takes_items_and_finds_them(label_free_home, label_free_server: Server) -> None:
    """The issue's flow on a model trained without labels: add (with a payload), search, get, delete."""
    version = ArtifactHome(label_free_home.home).current_version()
    mine = encode(photo(120, 90), "PNG")
    with SimCLRClient(label_free_server.url, token=LABEL_FREE_TOKEN) as client:
        added = client.add(mine, payload={"album": "holiday"})
        assert added.model_version == version
        try:
            top = client.neighbors(image=mine, k=3).neighbors[0]
            assert top.id == added.id and top.score == pytest.approx(1, abs=1e-4) and top.payload == {"album": "holiday"}
            assert client.get(added.id).payload == {"album": "holiday"}
            by_id = client.neighbors(id=added.id, k=3).neighbors  # an added item is a query by id too
            assert len(by_id) == 3 and added.id not in [n.id for n in by_id]
        finally:
            client.delete(added.id)
        assert added.id not in [n.id for n in client.neighbors(image=mine, k=10).neighbors]
        with pytest.raises(SimCLRError) as e:
            client.get(added.id)
        assert e.value.status == 404

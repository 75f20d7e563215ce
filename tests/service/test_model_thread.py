"""What the model thread computes, in process, on the bundle as served (frozen models): each upload's
answer is what its image alone gives the eager models, normalised with the manifest's statistics,
and an upload that does not decode fails alone."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from fastapi import HTTPException
from PIL import Image

from core import models
from core.bundles import LoadedBundle, Normalization, load_current
from core.home import ArtifactHome
from service import model_thread
from service.decoding import prepare_upload
from service.frozen import for_serving
from service_testkit import chw_png

PROBES = (3, 17, 42, 199)


def thumbnail(chw: np.ndarray) -> Image.Image:
    """An indexed image as a PNG upload, made ready the way a route does (a thumbnail: decoded in the batch)."""
    upload = prepare_upload(chw_png(chw), 10**6)
    assert isinstance(upload, Image.Image)
    return upload


def broken() -> Image.Image:
    """A PNG whose header is fine and whose pixels are cut off: it fails in the model thread, with 400."""
    return prepare_upload(chw_png(np.zeros((3, 32, 32), np.uint8))[:60], 10**6)


@pytest.fixture(scope="module")
def bundles(bundle) -> tuple[LoadedBundle, LoadedBundle]:
    """(eager, served): the bundle as loaded, and as the service runs it."""
    eager = load_current(ArtifactHome(bundle.home))
    return eager, for_serving(eager)


def eager_probs(eager: LoadedBundle, images: np.ndarray, norm: Normalization) -> np.ndarray:
    with torch.inference_mode():
        return np.stack([eager.classifier(models.normalize(torch.from_numpy(images[i : i + 1]), norm.mean, norm.std)).softmax(1)[0].numpy()
                         for i in range(len(images))])


def test_classify_answers_each_upload_as_alone_and_a_broken_one_fails_alone(bundles, bundle) -> None:
    eager, served = bundles
    images = bundle.images[list(PROBES)]
    got = model_thread.classify(served, [thumbnail(images[0]), broken(), *images[1:]])  # decoded pixels and thumbnails mixed
    assert isinstance(got[1], HTTPException) and got[1].status_code == 400
    probs = np.stack([got[0], *got[2:]])
    np.testing.assert_allclose(probs, eager_probs(eager, images, eager.manifest.normalization), atol=1e-4)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)


def test_embed_is_the_one_embedding_function(bundles, bundle) -> None:
    eager, served = bundles
    images = bundle.images[list(PROBES)]
    got = model_thread.embed(served, [*images[:-1], broken(), thumbnail(images[-1])])
    assert isinstance(got[-2], HTTPException)
    embeddings = np.stack([*got[:-2], got[-1]])
    want = models.embed(eager.encoder, torch.from_numpy(images)).numpy()
    assert embeddings.dtype == np.float32 and embeddings.shape == want.shape
    np.testing.assert_allclose(embeddings, want, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)
    # The index was built by the same function: an indexed image embeds to its stored vector.
    np.testing.assert_allclose(embeddings, np.stack([served.index.reconstruct(i) for i in PROBES]), atol=1e-4)


def test_embed_and_search_finds_each_indexed_image_with_its_own_k(bundles, bundle) -> None:
    _, served = bundles
    ks = (4, 1, 10, 100)
    items = [(bundle.images[i], k) for i, k in zip(PROBES, ks)]
    got = model_thread.embed_and_search(served, [items[0], (broken(), 3), *items[1:]])
    assert isinstance(got[1], HTTPException) and got[1].status_code == 400
    for item, k, (scores, ids) in zip(PROBES, ks, [got[0], *got[2:]]):
        assert len(scores) == len(ids) == k
        assert ids[0] == item and scores[0] == pytest.approx(1.0, abs=1e-4)
        assert (np.diff(scores) <= 1e-6).all()
    assert model_thread.embed_and_search(served, [(broken(), 5)])[0].status_code == 400  # nothing to embed: no forward


def test_every_forward_pass_normalises_with_the_manifests_statistics(bundles, bundle) -> None:
    """The manifest's ``normalization`` is what serving uses: another one gives other answers, the right ones."""
    eager, served = bundles
    other = Normalization(mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25))
    assert other != served.manifest.normalization
    changed = replace(served, manifest=served.manifest.model_copy(update={"normalization": other}))
    images = bundle.images[list(PROBES)]

    probs = np.stack(model_thread.classify(changed, list(images)))
    np.testing.assert_allclose(probs, eager_probs(eager, images, other), atol=1e-4)
    assert not np.allclose(probs, np.stack(model_thread.classify(served, list(images))), atol=1e-3)

    embeddings = np.stack(model_thread.embed(changed, list(images)))
    want = models.embed(eager.encoder, torch.from_numpy(images), mean=other.mean, std=other.std).numpy()
    np.testing.assert_allclose(embeddings, want, atol=1e-4)
    assert not np.allclose(embeddings, np.stack(model_thread.embed(served, list(images))), atol=1e-3)

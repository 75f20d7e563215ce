"""service/collection.py in process: a view's search equals brute force over exactly the live items, old views
never change, and a new model version re-embeds every added item from its stored pixels."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SPEC, Bundle
from core.bundles import LoadedBundle, load_bundle
from core.models import build_encoder, embed
from index.faiss_index import neighbor_table
from service.collection import LiveCollection, View
from service.frozen import MAX_K


@pytest.fixture(scope="module")
def loaded(bundle: Bundle) -> LoadedBundle:
    b = load_bundle(bundle.home / "models" / bundle.version)
    return replace(b, id_neighbors=neighbor_table(b.index, MAX_K + 1))  # as service.frozen.for_serving, untraced


def unit(rng: np.random.Generator, dim: int) -> np.ndarray:
    v = rng.normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def brute(expected: dict[int, np.ndarray], q: np.ndarray, k: int, exclude: int | None = None) -> tuple[list[int], np.ndarray]:
    ids = [i for i in expected if i != exclude]
    scores = np.array([expected[i] @ q for i in ids])
    order = np.argsort(-scores, kind="stable")[:k]
    return [ids[j] for j in order], scores[order]


def check(view: View, expected: dict[int, np.ndarray], rng: np.random.Generator) -> None:
    assert view.live_ids.tolist() == sorted(expected)
    dim = view.bundle.index.d
    for k in (1, 5, 100):
        q = unit(rng, dim)
        scores, ids = view.search(q, k)
        want_ids, want_scores = brute(expected, q, k)
        np.testing.assert_allclose(scores, want_scores, atol=1e-5)
        assert set(ids.tolist()) == set(want_ids) or np.allclose(np.sort(scores), np.sort(want_scores), atol=1e-5)
    for item in rng.choice(sorted(expected), 6, replace=False).tolist():
        scores, ids = view.neighbors_of(item, 10)
        want_ids, want_scores = brute(expected, expected[item], 10, exclude=item)
        assert item not in ids.tolist() and len(ids) == len(want_ids)
        np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_views_search_exactly_the_live_items_and_never_change(loaded: LoadedBundle, tmp_path: Path) -> None:
    installed: list[View] = []
    live = LiveCollection(tmp_path / "collection", installed.append)
    live.switch(loaded)
    n, dim = loaded.index.ntotal, loaded.index.d
    expected = {i: loaded.index.reconstruct(i) for i in range(n)}
    rng, pick = np.random.default_rng(0), random.Random(0)
    pixels = {32: np.zeros((3, 32, 32), np.uint8), 64: np.zeros((3, 64, 64), np.uint8)}
    early, early_answers = None, None
    for step in range(260):  # enough adds, replaces and deletes to grow and compact the vector buffer twice
        action = pick.random()
        if action < 0.6:
            v = unit(rng, dim)
            written = live.put(None, {"step": step}, pixels, loaded.version, v)
            expected[written.id] = v
        elif action < 0.8:
            target = pick.choice(sorted(expected))
            v = unit(rng, dim)
            assert live.put(target, None, pixels, loaded.version, v).created is False
            expected[target] = v
        else:
            target = pick.choice(sorted(expected))
            assert live.delete(target) == loaded.version
            del expected[target]
        if step == 40:
            early, q = installed[-1], unit(rng, dim)
            early_answers = (q, early.search(q, 20), early.live_ids.copy(), dict(expected))
    view = installed[-1]
    check(view, expected, rng)
    assert live.delete(max(expected) + 1) is None  # not live: nothing written

    q, (scores, ids), live_ids, then = early_answers
    again = early.search(q, 20)
    np.testing.assert_array_equal(again[0], scores)
    np.testing.assert_array_equal(again[1], ids)
    assert early.live_ids.tolist() == live_ids.tolist() == sorted(then)
    check(early, then, rng)  # the early view still answers exactly as of its own point in the log

    # Another process (a second LiveCollection on the same log) replays the same view.
    other_installed: list[View] = []
    other = LiveCollection(tmp_path / "collection", other_installed.append)
    other.switch(loaded)
    check(other_installed[-1], expected, rng)
    written = live.put(None, {"late": True}, pixels, loaded.version, unit(rng, dim))
    assert other.log.changed()
    other.sync()
    assert other_installed[-1].payload(written.id) == {"late": True}


def test_a_new_version_embeds_every_added_item_with_its_encoder(loaded: LoadedBundle, tmp_path: Path) -> None:
    installed: list[View] = []
    live = LiveCollection(tmp_path / "collection", installed.append)
    live.switch(loaded)
    rng = np.random.default_rng(1)
    images = {i: rng.integers(0, 256, (3, 32, 32), dtype=np.uint8) for i in range(5)}
    ids = []
    for i, image in images.items():
        copies = {32: image, 64: np.kron(image, np.ones((1, 2, 2), dtype=np.uint8))}
        ids.append(live.put(None, {"i": i}, copies, loaded.version, unit(rng, loaded.index.d)).id)
    live.delete(3)

    torch.manual_seed(99)
    encoder = build_encoder(SPEC).eval()
    v2 = replace(loaded, manifest=loaded.manifest.model_copy(update={"version": "v2"}), encoder=encoder, id_neighbors=None)
    live.switch(v2)
    view = installed[-1]
    assert view.bundle is v2 and not view.is_base(3) and not view.has(3)
    want = embed(encoder, torch.from_numpy(np.stack(list(images.values())))).numpy()
    for j, item in enumerate(ids):
        np.testing.assert_allclose(view.vector(item), want[j], atol=1e-5)
        assert view.payload(item) == {"i": j}
    assert live.put(None, None, {32: images[0]}, "v2", want[0]).model_version == "v2"

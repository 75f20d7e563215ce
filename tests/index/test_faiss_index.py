"""Exact inner-product FAISS indexes over unit embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from index.faiss_index import build_index, neighbor_table, reconstruct, search


def unit_vectors(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_search_ranks_by_cosine_and_finds_itself_first() -> None:
    x = unit_vectors(20)
    index = build_index(x)
    assert index.ntotal == 20 and index.d == 8
    scores, ids = search(index, x[:3], 5)
    assert ids.shape == scores.shape == (3, 5)
    assert ids[:, 0].tolist() == [0, 1, 2]
    expected = np.sort(x[:3] @ x.T, axis=1)[:, ::-1][:, :5]
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(reconstruct(index, 7), x[7])


def test_k_beyond_the_index_is_clipped_and_a_single_query_may_be_1d() -> None:
    x = unit_vectors(3)
    scores, ids = search(build_index(x), x[1], 10)
    assert ids.shape == (1, 3) and ids[0, 0] == 1


def test_empty_or_flat_embeddings_are_refused() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        build_index(np.zeros((0, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="non-empty"):
        build_index(np.zeros(8, dtype=np.float32))


def test_neighbor_table_is_every_item_searched_against_the_index() -> None:
    x = unit_vectors(11)
    index = build_index(x)
    scores, ids = neighbor_table(index, 4, batch=3)  # batches that do not divide the items
    want_scores, want_ids = search(index, x, 4)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-6)
    assert neighbor_table(index, 50)[1].shape == (11, 11)

"""FAISS indexes over unit embeddings: exact search, the auto kind, approximate kinds tuned to a recall."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from index.faiss_index import (
    EXACT,
    HNSW,
    IVF,
    auto_kind,
    build,
    build_index,
    ivf_lists,
    knob,
    neighbor_table,
    recall_at,
    reconstruct,
    search,
    search_parameters,
)


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


def clustered(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    """Unit vectors around 50 centres: structure like real embeddings', where approximate search is meaningful."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, d)).astype(np.float32)
    x = centres[rng.integers(0, 50, n)] + 0.6 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_auto_is_exact_while_a_query_is_cheap_and_hnsw_above(monkeypatch: pytest.MonkeyPatch) -> None:
    assert auto_kind(65_000, 128) == EXACT and auto_kind(66_000, 128) == HNSW
    assert auto_kind(16_000, 512) == EXACT and auto_kind(17_000, 512) == HNSW
    x = clustered(3000)
    assert build(x, "auto").kind == EXACT
    monkeypatch.setattr("index.faiss_index.AUTO_EXACT_MAX_MACS", 2999 * 32)  # the same data, "too large" for exact
    built = build(x, "auto")
    assert built.kind == HNSW and isinstance(faiss.downcast_index(built.index.index), faiss.IndexHNSWFlat)


@pytest.mark.parametrize("kind", [HNSW, IVF])
def test_approximate_kinds_reach_the_target_recall_and_record_it(kind: str) -> None:
    data = clustered(4200)
    x, queries = data[:4000], data[4000:]  # queries from the same distribution, not indexed
    built = build(x, kind, target_recall=0.97)
    assert built.kind == kind and built.target_recall == 0.97
    assert built.recall_at_10 is not None and built.recall_at_10 >= 0.97
    knob_name = "efSearch" if kind == HNSW else "nprobe"
    assert built.params[knob_name] == knob(built.index)
    assert ("M" in built.params) if kind == HNSW else (built.params["nlist"] == ivf_lists(4000))
    # the knob travels with the index, and recall measured again from outside agrees
    index = faiss.deserialize_index(faiss.serialize_index(built.index))
    assert knob(index) == built.params[knob_name]
    _, truth = faiss.knn(queries, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
    assert recall_at(search(index, queries, 10)[1], truth) >= 0.9
    np.testing.assert_allclose(reconstruct(index, 17), x[17])  # GET /neighbors?id= reads stored vectors
    assert search(index, x[[5, 3999]], 1)[1][:, 0].tolist() == [5, 3999]  # ids are row numbers, held-out rows too


def test_an_unreachable_target_takes_the_largest_knob_and_says_what_it_got() -> None:
    x = clustered(3000)
    built = build(x, IVF, target_recall=1.0)
    assert built.recall_at_10 is not None and 0 < built.recall_at_10 <= 1.0
    if built.recall_at_10 < 1.0:
        assert built.params["nprobe"] == built.params["nlist"]  # the whole ladder was tried


@pytest.mark.parametrize("kind", [EXACT, HNSW, IVF])
def test_a_selector_hides_ids_from_every_kind(kind: str) -> None:
    x = clustered(3000)
    index = build(x, kind).index
    hidden = np.zeros(3000, dtype=bool)
    hidden[::3] = True  # a third deleted
    bitmap = np.packbits(~hidden, bitorder="little")
    selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
    params = search_parameters(index, selector, widen=1.5)
    _, ids = search(index, x[:50], 10, params=params)
    assert not hidden[ids[ids >= 0]].any()
    assert (ids >= 0).sum() >= 0.95 * ids.size  # the widened walk still finds k live items


def test_recall_counts_shared_ids_and_ignores_padding() -> None:
    assert recall_at(np.array([[1, 2, -1]]), np.array([[2, 3, 1]])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="unknown index kind"):
        build(clustered(100), "flat")

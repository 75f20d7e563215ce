"""FAISS indexes over unit-norm embeddings: exact inner-product search (= cosine similarity)."""

from __future__ import annotations

import faiss
import numpy as np

EXACT = "IndexFlatIP"


def build_index(embeddings: np.ndarray) -> faiss.Index:
    """An exact inner-product index over float32 ``(N, D)`` embeddings (id = row number)."""
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ValueError(f"need a non-empty (N, D) array of embeddings, got shape {embeddings.shape}")
    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
    return index


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best ``(scores, ids)`` per query, each ``(Q, k)``, best first; ids -1 pad missing hits."""
    q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, index.d)
    return index.search(q, min(k, index.ntotal))


def reconstruct(index: faiss.Index, item_id: int) -> np.ndarray:
    """The stored embedding ``(D,)`` of one indexed item."""
    return index.reconstruct(int(item_id))


def neighbor_table(index: faiss.Index, k: int, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Every indexed item's ``k`` best ``(scores, ids)``, each ``(N, k)``: the index searched against itself.

    Itself included (first, unless a duplicate ties with it). Exact, in batches of
    ``batch`` queries; costs ``N**2 * D`` multiply-adds, so it is for small indexes.
    """
    n = index.ntotal
    k = min(k, n)
    scores, ids = np.empty((n, k), dtype=np.float32), np.empty((n, k), dtype=np.int64)
    for start in range(0, n, batch):
        rows = min(batch, n - start)
        scores[start : start + rows], ids[start : start + rows] = index.search(index.reconstruct_n(start, rows), k)
    return scores, ids

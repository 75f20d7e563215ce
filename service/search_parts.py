"""The searchable parts of a collection view, and what a search may cost on the event loop.

- :class:`Rows`: the added items' vectors, searched exactly, or through :class:`Sealed` (an HNSW
  index over the first rows, built in the background) plus an exact scan of the rows after it
- :func:`filtered_search`: an index searched for the ids a selector admits (deleted items are
  tombstones: a bitmap the search skips), its walk widened to find as many live hits
- :func:`merge`: the best of several hit lists
- :func:`inline_macs` and :data:`INLINE_MACS`: the rule of what may run on the event loop

``service.collection`` builds its views from these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from index.faiss_index import is_exact, search, search_parameters
from index.faiss_index import search_macs as index_search_macs

# Multiply-adds a search may cost on the event loop: ~0.1-0.3 ms on one core. Costlier ones run in the model thread.
INLINE_MACS = 1 << 20
APPROXIMATE_MACS = 1 << 62  # what inline_macs counts for an approximate index: never on the event loop


def inline_macs(index: faiss.Index) -> int:
    """A search's cost for the rule of what runs on the event loop (:data:`INLINE_MACS`): an exact index's
    multiply-adds; an approximate one never qualifies, as its graph or list walk costs cache misses and
    has a tail that a count of multiply-adds does not show."""
    return index_search_macs(index) if is_exact(index) else APPROXIMATE_MACS


def filtered_search(index: faiss.Index, q: np.ndarray, k: int, selector: faiss.IDSelector, widen: float) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` ids ``selector`` admits for one ``(1, D)`` query. An approximate index's walk is widened
    by ``widen`` (the admitted fraction's inverse), and once more, four times as wide, if it still comes
    back short: the deleted items can crowd one region of the graph or one list."""
    for attempt in (widen, 4 * widen):
        scores, ids = search(index, q, k, params=search_parameters(index, selector, attempt, k))
        if is_exact(index) or ids[0, -1] >= 0:
            break
    return scores[0], ids[0]


@dataclass(frozen=True, eq=False)
class Sealed:
    """An HNSW index over the first ``rows`` rows of one vectors buffer (id = row), built in the background
    (:meth:`LiveCollection.seal`). Rows below ``rows`` never change, so it stays valid for every later
    view over the same buffer; rows that died since are skipped by a selector."""

    buffer: np.ndarray  # the buffer it indexes (identity: a compacted buffer invalidates it)
    rows: int
    index: faiss.Index


@dataclass(frozen=True, eq=False)
class Rows:
    """The added items' vectors as one view sees them: ``vectors[r]`` is item ``ids[r]``'s unless
    ``alive[r]`` is False (``alive`` None: every row is live). ``sealed``: the first rows' HNSW index,
    when the collection grew large enough to have one; the rows after it are searched exactly."""

    vectors: np.ndarray  # (n, D) float32, read-only
    ids: np.ndarray  # (n,) int64
    alive: np.ndarray | None  # (n,) bool
    count: int  # live rows
    sealed: Sealed | None = None

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The best ``min(k, count)`` live rows for one ``(D,)`` query: ``(scores, ids)``, best first.

        The tail after the sealed rows (all of them without a seal) by FAISS's exact search, as the
        bundle's index is searched: one query runs on the calling thread (SIMD, no BLAS). Not numpy's
        ``vectors @ q``: its OpenBLAS spreads a matrix-vector product over every core, and next to a busy
        model thread it measured 7.7 ms instead of 0.09 (5000 x 128, the 2-core build machine). Dead rows
        are asked for too and dropped."""
        kk = min(k, self.count)
        if kk <= 0:
            return np.empty(0, dtype=np.float32), np.empty(0, dtype=np.int64)
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        start = self.sealed.rows if self.sealed is not None else 0
        n = len(self.ids)
        parts = []
        if n > start:
            dead = 0 if self.alive is None else int((~self.alive[start:]).sum())
            scores, rows = faiss.knn(q, self.vectors[start:], min(n - start, kk + dead), metric=faiss.METRIC_INNER_PRODUCT)
            parts.append((scores[0], np.where(rows[0] >= 0, rows[0] + start, -1)))
        if self.sealed is not None:
            parts.append(self._search_sealed(q, kk))
        scores = np.concatenate([p[0] for p in parts])
        rows = np.concatenate([p[1] for p in parts])
        keep = rows >= 0
        if self.alive is not None:
            keep &= self.alive[np.maximum(rows, 0)]
        scores, rows = scores[keep], rows[keep]
        order = np.argsort(-scores, kind="stable")[:kk]
        return scores[order], self.ids[rows[order]]

    def _search_sealed(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sealed = self.sealed
        assert sealed is not None
        if self.alive is None or self.alive[: sealed.rows].all():
            scores, rows = search(sealed.index, q, k)
            return scores[0], rows[0]
        live = self.alive[: sealed.rows]
        n_live = int(live.sum())
        if n_live == 0:
            return np.empty(0, dtype=np.float32), np.empty(0, dtype=np.int64)
        bitmap = np.packbits(live, bitorder="little")
        selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
        return filtered_search(sealed.index, q, min(k, n_live), selector, sealed.rows / n_live)

    def search_macs(self) -> int:
        """About the multiply-adds of :meth:`search`: the sealed index's search and the tail's scan."""
        d = self.vectors.shape[1] if self.vectors.ndim == 2 else 0
        if self.sealed is None:
            return len(self.ids) * d
        return inline_macs(self.sealed.index) + (len(self.ids) - self.sealed.rows) * d

    def unsealed(self) -> int:
        return len(self.ids) - (self.sealed.rows if self.sealed is not None else 0)


def merge(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int, exclude: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of several ``(scores, ids)`` hit lists, without padding (-1) and ``exclude``."""
    scores = np.concatenate([np.asarray(s, dtype=np.float32).reshape(-1) for s, _ in parts])
    ids = np.concatenate([np.asarray(i, dtype=np.int64).reshape(-1) for _, i in parts])
    keep = ids >= 0
    if exclude is not None:
        keep &= ids != exclude
    scores, ids = scores[keep], ids[keep]
    order = np.argsort(-scores, kind="stable")[:k]  # ties: the bundle's hits first, as listed
    return scores[order], ids[order]

"""FAISS indexes over unit-norm embeddings (inner product = cosine similarity): exact, HNSW or IVF.

The kind follows the collection, as autofaiss chooses it: exact search while one query costs
at most :data:`AUTO_EXACT_MAX_MACS` multiply-adds (about half a millisecond on one core:
65k items of 128 dimensions, 16k of 512), an approximate index above. Which approximate
kind ``auto`` takes was decided by ``benchmarks/index_scale.py`` (HNSW: the lower latency at
the same recall on real embeddings, IVF: the smaller and faster build; see its results).

An approximate index's search-time knob (HNSW's ``efSearch``, IVF's ``nprobe``) is chosen
at build time: the smallest value on a ladder whose recall@10 against exact search reaches
the target, measured with up to :data:`RECALL_QUERIES` of the items as queries, held out:
they are added to the index only after the tuning. Indexed items make flattering queries:
HNSW links each one to its own neighbours, so a search that starts from it finds them (on
clustered data, 0.97 for indexed items where unseen queries got 0.89 at the same efSearch).
Held out, the items keep their row numbers as ids: HNSW is wrapped in an ``IndexIDMap2``
(FAISS's HNSW numbers items in the order they are added), IVF takes ids natively. The kind,
the parameters and the recall are returned (:class:`BuiltIndex`) for ``core.index_files`` to
record; the knob is also stored in the index itself, so any reader searches as measured.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import faiss
import numpy as np

EXACT, HNSW, IVF = "exact", "hnsw", "ivf"
KINDS = (EXACT, HNSW, IVF)
AUTO_EXACT_MAX_MACS = 1 << 23  # one exact query up to ~8.4M multiply-adds (~0.5 ms on one core)
RECALL_QUERIES = 1000
RECALL_K = 10
HNSW_M = 32  # links per node: FAISS's HNSW32, 2 x 32 x 4 bytes of graph per vector on top of the vector
HNSW_EF_CONSTRUCTION = 64
EF_SEARCH_LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
NPROBE_LADDER = (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
IVF_TRAIN_PER_LIST = 64  # k-means training points per list (FAISS warns below 39)


@dataclass(frozen=True)
class BuiltIndex:
    """A built index and what to record about it: ``params`` as ``{"M": 32, "efSearch": 64}``."""

    index: faiss.Index
    kind: str
    params: dict[str, int] = field(default_factory=dict)
    recall_at_10: float | None = None  # None: exact (1.0 by construction)
    target_recall: float | None = None
    build_seconds: float = 0.0


def auto_kind(n: int, dim: int) -> str:
    """``exact`` while one query costs at most :data:`AUTO_EXACT_MAX_MACS`, else ``hnsw``."""
    return EXACT if n * dim <= AUTO_EXACT_MAX_MACS else HNSW


def ivf_lists(n: int) -> int:
    """IVF lists for ``n`` vectors: the power of two nearest ``4 sqrt(n)`` (FAISS's guideline of
    4-16 sqrt(n)), at most ``n / 39`` so every list gets enough k-means training points."""
    lists = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n))))
    return int(max(1, min(lists, n // 39)))


def _checked(embeddings: np.ndarray) -> np.ndarray:
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ValueError(f"need a non-empty (N, D) array of embeddings, got shape {embeddings.shape}")
    return np.ascontiguousarray(embeddings, dtype=np.float32)


def build_index(embeddings: np.ndarray) -> faiss.Index:
    """An exact inner-product index over float32 ``(N, D)`` embeddings (id = row number)."""
    x = _checked(embeddings)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index


def build(embeddings: np.ndarray, kind: str = "auto", target_recall: float = 0.95, seed: int = 0) -> BuiltIndex:
    """An index of ``kind`` (``auto``, ``exact``, ``hnsw`` or ``ivf``) over ``(N, D)`` unit embeddings,
    id = row number, its search knob tuned to ``target_recall`` (module docstring). Blocking: FAISS
    uses every thread ``faiss.omp_set_num_threads`` allows."""
    x = _checked(embeddings)
    n, d = x.shape
    if kind == "auto":
        kind = auto_kind(n, d)
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; one of auto, {', '.join(KINDS)}")
    if not 0.0 < target_recall <= 1.0:
        raise ValueError(f"target recall must be in (0, 1], got {target_recall}")
    t = time.perf_counter()
    if kind == EXACT:
        return BuiltIndex(build_index(x), EXACT, build_seconds=time.perf_counter() - t)
    rng = np.random.default_rng(seed)
    held = np.sort(rng.choice(n, min(RECALL_QUERIES, n // 10), replace=False))  # the tuning queries
    rest = np.setdiff1d(np.arange(n), held)
    if kind == HNSW:
        graph = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index = faiss.IndexIDMap2(graph)
        params = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}
    else:
        lists = ivf_lists(n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, lists, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(x if n <= lists * IVF_TRAIN_PER_LIST else x[np.sort(rng.choice(n, lists * IVF_TRAIN_PER_LIST, replace=False))])
        index.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct(id) for GET /neighbors?id=; ids added out of order
        params = {"nlist": lists}
    index.add_with_ids(x[rest], rest)
    seconds = time.perf_counter() - t
    knob_value, recall = tune(index, x[rest], rest, x[held], target_recall)  # measured, not building: not in build_seconds
    t = time.perf_counter()
    index.add_with_ids(x[held], held)
    params.update(knob_value)
    return BuiltIndex(index, kind, params, recall, target_recall, seconds + time.perf_counter() - t)


def _unwrapped(index: faiss.Index) -> faiss.Index:
    """The index under an id map (HNSW is wrapped in one: :func:`build`)."""
    return faiss.downcast_index(index.index) if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)) else index


def set_knob(index: faiss.Index, value: int) -> None:
    """Set an approximate index's search knob (efSearch or nprobe); stored with the index."""
    inner = _unwrapped(index)
    if isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efSearch = int(value)
    else:
        faiss.extract_index_ivf(inner).nprobe = int(value)


def knob(index: faiss.Index) -> int | None:
    """The index's search knob (efSearch or nprobe), None for an exact index."""
    inner = _unwrapped(index)
    if isinstance(inner, faiss.IndexHNSW):
        return int(inner.hnsw.efSearch)
    if isinstance(inner, faiss.IndexIVF):
        return int(inner.nprobe)
    return None


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of ``|found_i & truth_i| / |truth_i|`` (ids ``(Q, k)``; -1 pads are never hits)."""
    hits = sum(len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) for f, t in zip(found, truth))
    return hits / max(1, int((truth >= 0).sum()))


def tune(index: faiss.Index, base: np.ndarray, base_ids: np.ndarray, queries: np.ndarray, target: float) -> tuple[dict[str, int], float]:
    """The smallest knob on the ladder whose recall@10 reaches ``target`` for ``queries`` (not in the
    index) against exact search over ``base`` (what the index holds, ids ``base_ids``), and that
    recall; the largest value and its recall if none does. The index is left set to the chosen value."""
    inner = _unwrapped(index)
    name = "efSearch" if isinstance(inner, faiss.IndexHNSW) else "nprobe"
    k = min(RECALL_K, len(base))
    if len(queries) == 0 or k == 0:
        value = EF_SEARCH_LADDER[2] if name == "efSearch" else min(NPROBE_LADDER[4], inner.nlist)
        set_knob(index, value)
        return {name: value}, 1.0
    _, rows = faiss.knn(queries, base, k, metric=faiss.METRIC_INNER_PRODUCT)
    truth = base_ids[rows]
    ladder = EF_SEARCH_LADDER if name == "efSearch" else [p for p in NPROBE_LADDER if p < inner.nlist] + [inner.nlist]
    recall = 0.0
    for value in ladder:
        set_knob(index, value)
        _, found = index.search(queries, k)
        recall = recall_at(found, truth)
        if recall >= target:
            break
    return {name: int(value)}, round(recall, 4)


def search_parameters(index: faiss.Index, selector: faiss.IDSelector | None = None, widen: float = 1.0,
                      k: int = 0) -> faiss.SearchParameters:
    """Search parameters of the index's own kind (FAISS refuses another kind's) with ``selector``
    (the ids that may be returned) and the knob scaled by ``widen``: a search that skips a fraction
    ``f`` of the items needs ``1 / (1 - f)`` times the candidates to find as many live ones. HNSW
    keeps at least ``k`` candidates whatever its efSearch, so ``k`` is widened too."""
    value = knob(index)
    inner = _unwrapped(index)
    if isinstance(inner, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW()
        params.efSearch = int(math.ceil(max(value, k) * widen))
    elif isinstance(inner, faiss.IndexIVF):
        params = faiss.SearchParametersIVF()
        params.nprobe = min(inner.nlist, int(math.ceil(value * widen)))
    else:
        params = faiss.SearchParameters()
    if selector is not None:
        params.sel = selector
    return params


def is_exact(index: faiss.Index) -> bool:
    return knob(index) is None


def search(index: faiss.Index, queries: np.ndarray, k: int, params: faiss.SearchParameters | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best ``(scores, ids)`` per query, each ``(Q, k)``, best first; ids -1 pad missing hits."""
    q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, index.d)
    k = min(k, index.ntotal)
    if params is None:
        return index.search(q, k)
    return index.search(q, k, params=params)


def search_macs(index: faiss.Index) -> int:
    """About how many multiply-adds one query costs: decides whether a search may run on the event loop."""
    d, n, inner = index.d, index.ntotal, _unwrapped(index)
    if isinstance(inner, faiss.IndexHNSW):
        return inner.hnsw.efSearch * inner.hnsw.nb_neighbors(0) * d  # candidates x their level-0 links (2M)
    if isinstance(inner, faiss.IndexIVF):
        return (inner.nlist + inner.nprobe * n // max(1, inner.nlist)) * d
    return n * d


def reconstruct(index: faiss.Index, item_id: int) -> np.ndarray:
    """The stored embedding ``(D,)`` of one indexed item."""
    return index.reconstruct(int(item_id))


def neighbor_table(index: faiss.Index, k: int, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Every indexed item's ``k`` best ``(scores, ids)``, each ``(N, k)``: the index searched against itself.

    Itself included (first, unless a duplicate ties with it). In batches of ``batch`` queries;
    an exact index costs ``N**2 * D`` multiply-adds, so it is for small indexes.
    """
    n = index.ntotal
    k = min(k, n)
    scores, ids = np.empty((n, k), dtype=np.float32), np.empty((n, k), dtype=np.int64)
    for start in range(0, n, batch):
        rows = min(batch, n - start)
        scores[start : start + rows], ids[start : start + rows] = index.search(index.reconstruct_n(start, rows), k)
    return scores, ids

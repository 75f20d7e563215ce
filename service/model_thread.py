"""What the model thread runs: a batch's uploads decoded, then one forward pass of the frozen models.

``service.app`` builds one :class:`~service.batching.Batcher` per kind of work from
these functions; the batchers run them in the one model thread. Each takes the
bundle the batch's requests took (``service.frozen.for_serving`` has frozen its
models) and the batch's items, and answers one result per item, in order, or the
HTTPException of an upload that does not decode: that request fails, not its batch.

- :func:`classify`: softmax probabilities over all classes (POST /classify)
- :func:`embed_and_search`: the best hits of each upload's embedding in the index, or in the
  view of the index and the collection the request took (POST /neighbors)
- :func:`embed`: unit embeddings (POST /embed; POST /items stores them)
- :func:`neighbors_of_ids`: the best hits of indexed items (GET /neighbors?id= over an index
  too large or too approximate to search on the event loop): one search for the batch

Every forward pass normalises its input with the bundle manifest's ``normalization``
(the statistics the models were trained with), and embeddings are
``core.models.embed``'s, the function that embedded the indexed items: a query is
embedded exactly as the index was. One forward pass per batch, in eval mode, so
each row is what the image alone would give (within float tolerance). Nothing else
runs here: no progress bars, no training code.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor

import numpy as np
import torch
from fastapi import HTTPException

from core import models
from core.bundles import LoadedBundle
from index.faiss_index import reconstruct, search
from service.collection import View
from service.decoding import DecodedBatch, Upload, decode_batch


def _decode(bundle: LoadedBundle, uploads: Sequence[Upload], pool: Executor | None) -> DecodedBatch:
    return decode_batch(uploads, bundle.manifest.image_size, pool)


@torch.inference_mode()
def _probabilities(bundle: LoadedBundle, pixels: np.ndarray) -> np.ndarray:
    """``(B, C)`` softmax probabilities of uint8 ``(B, 3, H, W)`` pixels: one forward pass."""
    norm = bundle.manifest.normalization
    if bundle.classifier is None:  # the route answers 409 before submitting; never reached
        raise RuntimeError(f"model {bundle.version} has no classifier")
    logits = bundle.classifier(models.normalize(torch.from_numpy(pixels), norm.mean, norm.std))
    return logits.float().softmax(dim=1).numpy()


def embeddings(bundle: LoadedBundle, pixels: np.ndarray) -> np.ndarray:
    """``(B, D)`` float32 unit embeddings of uint8 ``(B, 3, H, W)`` pixels: one forward pass."""
    norm = bundle.manifest.normalization
    x = torch.from_numpy(pixels)
    return models.embed(bundle.encoder, x, batch_size=max(1, len(x)), mean=norm.mean, std=norm.std).numpy()


def classify(bundle: LoadedBundle, uploads: Sequence[Upload], pool: Executor | None = None) -> list[np.ndarray | HTTPException]:
    """Softmax probabilities over all classes, one ``(C,)`` row per upload (``(3, H, W)`` uint8
    pixels, or an upload decoded here, over ``pool`` if given: ``decoding.decode_batch``); an
    upload that does not decode gets its error."""
    batch = _decode(bundle, uploads, pool)
    return batch.answers(list(_probabilities(bundle, batch.pixels)) if batch.rows else [])


def embed(bundle: LoadedBundle, uploads: Sequence[Upload], pool: Executor | None = None) -> list[np.ndarray | HTTPException]:
    """The unit embedding ``(D,)`` float32 of each upload (inner product = cosine similarity,
    as the index's); an upload that does not decode gets its error."""
    batch = _decode(bundle, uploads, pool)
    return batch.answers(list(embeddings(bundle, batch.pixels)) if batch.rows else [])


def embed_and_search(
    bundle: LoadedBundle, items: Sequence[tuple[Upload, int] | tuple[Upload, int, View]], pool: Executor | None = None
) -> list[tuple[np.ndarray, np.ndarray] | HTTPException]:
    """``(scores, ids)`` of the best ``k`` hits for each ``(upload, k)``, or the upload's error if it
    does not decode: one forward pass and one search for the whole batch (the largest k, each
    query's prefix of it). An ``(upload, k, view)`` is searched in that view of ``bundle``, with the
    collection's added items and without its deleted ones (``service.collection.View.search``)."""
    batch = _decode(bundle, [item[0] for item in items], pool)
    if not batch.rows:
        return batch.answers([])
    queries = [items[i] for i in batch.rows]
    ks = [q[1] for q in queries]
    vectors = embeddings(bundle, batch.pixels)
    plain = [j for j, q in enumerate(queries) if len(q) == 2]
    results: list[tuple[np.ndarray, np.ndarray]] = [None] * len(queries)  # type: ignore[list-item]
    if plain:
        scores, ids = search(bundle.index, vectors if len(plain) == len(queries) else vectors[plain], max(ks[j] for j in plain))
        for row, j in enumerate(plain):
            results[j] = (scores[row, : ks[j]], ids[row, : ks[j]])
    for j, q in enumerate(queries):
        if len(q) == 3:
            results[j] = q[2].search(vectors[j], q[1])
    return batch.answers(results)


def neighbors_of_ids(bundle: LoadedBundle, items: Sequence[tuple[View, int, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(scores, ids)`` of the best ``k`` items for each ``(view, item id, k)``, the item itself left out
    (the route checked that it is live). Items of a plain view are searched in one call (FAISS's batch
    search: HNSW and IVF walk the queries together); the others in their view (``View.neighbors_of``)."""
    results: list[tuple[np.ndarray, np.ndarray]] = [None] * len(items)  # type: ignore[list-item]
    plain = [j for j, (view, _, _) in enumerate(items) if view.plain]
    if plain:
        queries = np.stack([reconstruct(bundle.index, items[j][1]) for j in plain])
        scores, ids = search(bundle.index, queries, max(items[j][2] for j in plain) + 1)
        for row, j in enumerate(plain):
            _, item_id, k = items[j]
            keep = (ids[row] >= 0) & (ids[row] != item_id)  # by id, not rank: a duplicate can tie with the item
            results[j] = (scores[row][keep][:k], ids[row][keep][:k])
    for j, (view, item_id, k) in enumerate(items):
        if not view.plain:
            results[j] = view.neighbors_of(item_id, k)
    return results

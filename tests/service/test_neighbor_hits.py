"""service.routes.neighbors.hits: search results turned into neighbours, on a collection that changes meanwhile."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import pytest
from fastapi import HTTPException

from conftest import Bundle
from core.bundles import LoadedBundle, load_bundle
from service.routes.neighbors import collection_neighbors_of_id, hits


def test_an_added_item_deleted_between_the_search_and_its_payload_is_left_out(bundle: Bundle) -> None:
    """On Qdrant the search and the payload read are two calls: a writer can delete an added item between
    them. It is dropped from the answer (it is gone), never read as a bundle row (that was a 500)."""
    loaded = load_bundle(bundle.home / "models" / bundle.version)
    live, deleted = 2**40 + 1, 2**40 + 2
    scores = np.array([0.9, 0.8, 0.7, 0.6], dtype=np.float32)
    ids = np.array([deleted, 3, live, 5], dtype=np.int64)
    found = hits(loaded, scores, ids, k=3, added={live: {"who": "live"}})
    assert [n.id for n in found] == [3, live, 5]
    assert found[1].payload == {"who": "live"} and found[0].payload["source"] == loaded.sources[3]


@dataclass
class ItemDeletedAfterTheCheck:
    """A live (Qdrant) view in which the item is there for ``has`` and gone by the search."""

    bundle: LoadedBundle
    remote: bool = True

    def has(self, item_id: int) -> bool:
        return True

    def neighbors_of(self, item_id: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        raise KeyError(item_id)


def test_an_item_deleted_between_the_check_and_the_search_is_a_404(bundle: Bundle) -> None:
    view = ItemDeletedAfterTheCheck(load_bundle(bundle.home / "models" / bundle.version))
    with pytest.raises(HTTPException) as e:
        asyncio.run(collection_neighbors_of_id(None, view, 2**40, 5))  # type: ignore[arg-type]
    assert e.value.status_code == 404 and "no item with id" in e.value.detail

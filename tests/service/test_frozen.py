"""The bundle as the service runs it: frozen models that answer like the eager ones, an eager
fallback when tracing cannot be trusted, and the precomputed neighbour table of GET /neighbors?id=."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import numpy as np
import torch
from torch import nn

from core.bundles import load_current
from core.home import ArtifactHome
from core.models import normalize
from index.faiss_index import neighbor_table, search
from service.app import create_app
from service.frozen import MAX_K, for_serving, freeze
from service.settings import Settings


def test_frozen_models_answer_like_the_eager_ones(bundle) -> None:
    eager = load_current(ArtifactHome(bundle.home))
    served = for_serving(eager)
    assert isinstance(served.classifier, torch.jit.ScriptModule) and isinstance(served.encoder, torch.jit.ScriptModule)
    for n in (1, 7, 32):  # batch sizes other than the traced one
        x = normalize(torch.from_numpy(bundle.images[:n]))
        with torch.inference_mode():
            torch.testing.assert_close(served.classifier(x), eager.classifier(x), atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(served.encoder(x), eager.encoder(x), atol=1e-4, rtol=1e-4)
    assert served.version == eager.version and served.index is eager.index


class Noisy(nn.Module):
    """Not a function of its input alone: a trace of it cannot reproduce it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) + torch.rand(x.shape[0], 3)


def test_a_model_tracing_cannot_reproduce_is_served_eager() -> None:
    model = Noisy()
    assert freeze(model, image_size=8) is model


def test_neighbor_table_is_the_search_of_every_item(bundle) -> None:
    index = load_current(ArtifactHome(bundle.home)).index
    scores, ids = neighbor_table(index, 11, batch=64)  # several batches
    want_scores, want_ids = search(index, np.stack([index.reconstruct(i) for i in range(index.ntotal)]), 11)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    assert (ids == want_ids).mean() > 0.99  # exact ties may order differently between the two
    assert (ids[:, 0] == np.arange(index.ntotal)).all()  # each item first among its own neighbours


def test_neighbors_by_id_are_the_same_with_and_without_the_table(bundle, tmp_path: Path) -> None:
    """The table is an optimisation only: every id and k answers as the per-request search does."""

    async def answers(settings: Settings) -> list[dict[str, object]]:
        app = create_app(settings)
        out = []
        async with app.router.lifespan_context(app):
            assert (app.state.store.bundle.id_neighbors is not None) == (settings.neighbor_table_max_items > 0)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                for item, k in ((0, 1), (5, 7), (199, 5), (123, MAX_K)):
                    r = await client.get("/neighbors", params={"id": item, "k": k})
                    assert r.status_code == 200, r.text
                    out.append(r.json())
        return out

    base = {"home": bundle.home, "reload_interval": 0}
    with_table = anyio.run(answers, Settings(**base))
    without = anyio.run(answers, Settings(**base, neighbor_table_max_items=0))
    for a, b in zip(with_table, without):
        assert [h["id"] for h in a["neighbors"]] == [h["id"] for h in b["neighbors"]]
        np.testing.assert_allclose([h["score"] for h in a["neighbors"]], [h["score"] for h in b["neighbors"]], atol=1e-5)
    assert len(with_table[-1]["neighbors"]) == MAX_K and 123 not in [h["id"] for h in with_table[-1]["neighbors"]]

"""A tiny real pipeline through the CLI (the shared ``trained_home``): pretrain -> finetune -> index -> publish -> load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from core.bundles import load_current
from core.home import ArtifactHome
from core.models import embed
from index.faiss_index import search


def test_loss_falls_and_knn_is_logged(trained_home: Path) -> None:
    run = ArtifactHome(trained_home).run()
    history = run.metrics_history()
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["loss"] < history[0]["loss"]
    assert all(0.0 <= h["knn_top1"] <= 1.0 for h in history)
    assert run.loss_plot.stat().st_size > 0


def test_published_bundle_loads_and_serves_itself(trained_home: Path) -> None:
    home = ArtifactHome(trained_home)
    bundle = load_current(home)
    assert bundle is not None and bundle.version == home.current_version()
    m = bundle.manifest
    assert m.index.size == 100 and m.index.kind == "exact"
    assert m.class_names[:2] == ["airplane", "automobile"]
    assert 0.0 <= m.metrics["finetune_top1"] <= m.metrics["finetune_top3"] <= 1.0
    assert "knn_top1" in m.metrics
    # Every indexed image's nearest neighbour is itself.
    vectors = embed(bundle.encoder, torch.from_numpy(np.array(bundle.pixels))).numpy()
    _, ids = search(bundle.index, vectors, 1)
    assert (ids[:, 0] == np.arange(100)).all()


def test_data_with_a_test_split_is_scored_on_it(trained_home: Path) -> None:
    home = ArtifactHome(trained_home)
    record = home.run().read_finetune()
    manifest = load_current(home).manifest
    assert record is not None and record.eval_split == "test"
    assert record.classes == manifest.class_names and manifest.metrics_split == "test"

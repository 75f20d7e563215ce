"""The ``index`` stage: a run's encoder embeds an image split into ``index/`` (FAISS index, items, pixels)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.bundles import sha256_file
from core.home import ArtifactHome
from core.index_files import read_index_dir
from core.models import embed
from core.runs import RunPaths
from index import build


def run_copy(trained_home: Path, tmp_path: Path) -> RunPaths:
    """The trained run's config and encoder, without its index: ``build.main`` writes one."""
    src = ArtifactHome(trained_home).run()
    run = RunPaths(tmp_path / "run")
    run.dir.mkdir()
    for f in (src.config, src.encoder):
        shutil.copyfile(f, run.dir / f.name)
    return run


def test_indexes_the_runs_test_split_with_its_class_names(trained_home: Path, tmp_path: Path) -> None:
    run = run_copy(trained_home, tmp_path)
    stats = build.main(run, tmp_path / "data", limit=30)  # the run's data, its test split by default
    assert stats["index_size"] == 30.0
    items = read_index_dir(run.index_dir)
    assert items.info.size == items.index.ntotal == 30 and items.info.kind == "exact" and items.info.recall_at_10 is None
    assert items.info.encoder_fingerprint == sha256_file(run.encoder)
    assert items.classes[:2] == ["airplane", "automobile"] and len(items.classes) == 10
    assert all(s.startswith("test/") for s in items.sources) and ((items.labels >= 0) & (items.labels < 10)).all()
    assert items.pixels.shape == (30, 3, 32, 32) and items.pixels.dtype == np.uint8
    # The stored vectors are the one embedding function's, of the stored pixels.
    want = embed(run.load_encoder(), torch.from_numpy(np.array(items.pixels))).numpy()
    np.testing.assert_allclose(items.index.reconstruct_n(0, 30), want, rtol=1e-4, atol=1e-5)


def test_unlabelled_images_are_indexed_without_classes(trained_home: Path, tmp_path: Path) -> None:
    run = run_copy(trained_home, tmp_path)
    loose = tmp_path / "loose"
    loose.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 40), (60 * i, 0, 0)).save(loose / f"{i}.png")
    build.main(run, tmp_path / "data", data=str(loose))  # no test/ folder: its train split
    items = read_index_dir(run.index_dir)
    assert items.classes == [] and items.labels.tolist() == [-1, -1, -1]
    assert items.sources == ["train/0.png", "train/1.png", "train/2.png"]


def test_the_train_split_on_request(trained_home: Path, tiny_folder: Path, tmp_path: Path) -> None:
    run = run_copy(trained_home, tmp_path)
    build.main(run, tmp_path / "data", data=str(tiny_folder), split="train", limit=20, device="cpu")
    items = read_index_dir(run.index_dir)
    assert items.index.ntotal == 20 and all(s.startswith("train/") for s in items.sources)

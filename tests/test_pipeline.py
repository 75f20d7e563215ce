"""A tiny real pipeline through the CLI: pretrain -> finetune -> index -> publish -> load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from index.embed import embed
from index.faiss_index import search
from training.artifacts import ArtifactHome, BundleError, load_bundle, load_current
from training.cli import main as simclr


@pytest.fixture(scope="module")
def trained_home(tiny_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("home")
    common = ["--home", str(home)]
    simclr(["pretrain", *common, "--data", str(tiny_folder), "--width", "8", "--batch-size", "100",
            "--epochs", "6", "--proj-dim", "32", "--temperature", "0.2"])
    simclr(["finetune", *common, "--epochs", "2"])
    simclr(["index", *common])
    simclr(["publish", *common])
    return home


def test_loss_falls_and_knn_is_logged(trained_home: Path) -> None:
    run = ArtifactHome(trained_home).run()
    history = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert history[-1]["loss"] < history[0]["loss"]
    assert all(0.0 <= h["knn_top1"] <= 1.0 for h in history)
    assert run.loss_plot.stat().st_size > 0


def test_published_bundle_loads_and_serves_itself(trained_home: Path) -> None:
    home = ArtifactHome(trained_home)
    bundle = load_current(home)
    assert bundle is not None and bundle.version == home.current_version()
    m = bundle.manifest
    assert m.index.size == 100 and m.index.kind == "IndexFlatIP"
    assert m.class_names[:2] == ["airplane", "automobile"]
    assert 0.0 <= m.metrics["finetune_top1"] <= m.metrics["finetune_top3"] <= 1.0
    assert "knn_top1" in m.metrics
    # Every indexed image's nearest neighbour is itself.
    vectors = embed(bundle.encoder, torch.from_numpy(np.array(bundle.pixels)))
    _, ids = search(bundle.index, vectors, 1)
    assert (ids[:, 0] == np.arange(100)).all()


def test_tampered_bundle_is_refused(trained_home: Path, tmp_path: Path) -> None:
    import shutil

    home = ArtifactHome(trained_home)
    copy = tmp_path / home.current_version()  # bundles are loaded from a folder named as their version
    shutil.copytree(home.bundle_dir(home.current_version()), copy)
    with open(copy / "classifier.pt", "ab") as f:
        f.write(b"x")
    with pytest.raises(BundleError, match="fingerprint"):
        load_bundle(copy)


def test_index_from_another_encoder_is_refused(trained_home: Path, tmp_path: Path) -> None:
    import shutil

    home = ArtifactHome(trained_home)
    copy = tmp_path / home.current_version()  # bundles are loaded from a folder named as their version
    shutil.copytree(home.bundle_dir(home.current_version()), copy)
    meta = json.loads((copy / "index.json").read_text())
    meta["encoder_fingerprint"] = "0" * 64
    (copy / "index.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="another encoder"):
        load_bundle(copy)


def test_cli_reports_errors_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        simclr(["pretrain", "--home", str(tmp_path), "--data", str(tmp_path / "missing")])
    assert "neither 'cifar10' nor an existing folder" in str(e.value)
    with pytest.raises(SystemExit) as e:
        simclr(["publish", "--home", str(tmp_path)])
    assert "no pretraining run" in str(e.value)


def test_renamed_bundle_is_refused(trained_home: Path, tmp_path: Path) -> None:
    import shutil

    home = ArtifactHome(trained_home)
    copy = tmp_path / "another-name"
    shutil.copytree(home.bundle_dir(home.current_version()), copy)
    with pytest.raises(BundleError, match="never renamed"):
        load_bundle(copy)

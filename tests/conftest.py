"""Shared fixtures: a small real ImageFolder tree (from the shared CIFAR-10 copy when present) and one home trained on it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10-jpeg"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _synthetic(root: Path, per_class: dict[str, int]) -> None:
    """Coloured blobs, one colour family per class, for machines without the shared copy."""
    rng = np.random.default_rng(0)
    for split, n in per_class.items():
        for c, name in enumerate(CLASSES):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
                img[..., c % 3] += np.uint8(120 + 10 * (c // 3))
                Image.fromarray(img).save(d / f"{i:04d}.jpg")


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/<class>/ with 40 and test/<class>/ with 10 images of each of the 10 CIFAR-10 classes."""
    root = tmp_path_factory.mktemp("tiny-cifar")
    per_class = {"train": 40, "test": 10}
    if not SHARED_CIFAR.is_dir():
        _synthetic(root, per_class)
        return root
    for split, n in per_class.items():
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for f in sorted((SHARED_CIFAR / split / name).iterdir())[:n]:
                shutil.copyfile(f, root / split / name / f.name)
    return root


# The one trained home of the suite: every test that needs a trained run reads this one
# (tests that change a home work on ``trained_home_copy``). Tests that by their nature need
# a run of their own (resume equals a straight run, torchrun, the time budget) train theirs.


@pytest.fixture(scope="session")
def trained_home(tiny_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pretrain (3 epochs, width 8) -> finetune (2 epochs) -> index (the test split) -> publish, once, through the CLI."""
    from simclr.cli import main as simclr

    home = tmp_path_factory.mktemp("trained-home")
    common = ["--home", str(home)]
    simclr(["pretrain", *common, "--data", str(tiny_folder), "--width", "8", "--batch-size", "100", "--epochs", "3",
            "--proj-dim", "16", "--temperature", "0.2"])
    simclr(["finetune", *common, "--epochs", "2"])
    simclr(["index", *common])
    simclr(["publish", *common])
    return home


@pytest.fixture
def trained_home_copy(trained_home: Path, tmp_path: Path) -> Path:
    """A copy of ``trained_home`` (runs, bundles, CURRENT, the decoded-image cache) for a test that changes it."""
    return Path(shutil.copytree(trained_home, tmp_path / "home"))

"""Shared fixtures: a small real ImageFolder tree (from the shared CIFAR-10 copy when present)."""

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

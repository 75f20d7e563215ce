"""Shared fixtures: a small real ImageFolder tree (from the shared CIFAR-10 copy when present) and one home trained on it."""

from __future__ import annotations

import contextlib
import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.bundles import sha256_file
from core.home import ArtifactHome

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


@dataclass(frozen=True)
class LabelFreeHome:
    home: Path
    data: Path  # the folder it was trained on
    output: str  # what `simclr refresh` printed


@pytest.fixture(scope="session")
def label_free_folder(tiny_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's photos: 48 loose images, no class subfolders, no train/ or test/ (4 of each class's
    32 px train images, and 8 bigger non-square ones)."""
    root = tmp_path_factory.mktemp("my-photos")
    for name in CLASSES:
        for f in sorted((tiny_folder / "train" / name).iterdir())[:4]:
            shutil.copyfile(f, root / f"{name}-{f.name}")
    rng = np.random.default_rng(1)
    for i in range(8):
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(np.kron(coarse, np.ones((12, 12, 1), dtype=np.uint8))).save(root / f"photo-{i}.png")  # 96x72
    return root


@pytest.fixture(scope="session")
def label_free_home(label_free_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> LabelFreeHome:
    """``simclr refresh --image-size 64`` on ``label_free_folder`` (1 epoch, width 8): a 64 px model without classifier."""
    from simclr.cli import main as simclr

    home = tmp_path_factory.mktemp("label-free-home")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        simclr(["refresh", "--home", str(home), "--data", str(label_free_folder), "--image-size", "64", "--width", "8",
                "--batch-size", "16", "--epochs", "1", "--proj-dim", "16", "--temperature", "0.2"])
    return LabelFreeHome(home, label_free_folder, out.getvalue())


@pytest.fixture(scope="session")
def evaluated_home(trained_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ``trained_home`` with every evaluation row (end-to-end rows 1 epoch each) and its report."""
    from simclr.cli import main as simclr

    home = Path(shutil.copytree(trained_home, tmp_path_factory.mktemp("evaluated") / "home"))
    common = ["--home", str(home)]
    run = ArtifactHome(home).run()
    before = sha256_file(run.encoder)
    simclr(["evaluate", *common, "--epochs", "1"])
    assert sha256_file(run.encoder) == before  # evaluation never writes the run's encoder
    simclr(["report", *common])
    return home

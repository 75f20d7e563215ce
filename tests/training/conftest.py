"""Fixtures of the training tests: the shared trained home, evaluated (``simclr evaluate`` and ``simclr report``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from core.bundles import sha256_file
from core.home import ArtifactHome


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

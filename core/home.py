"""The artifact home (``--home``, default ``./artifacts``, env ``SIMCLR_HOME``). Nothing else builds these paths.

    <home>/
      runs/<run-id>/          a training run (``core.runs``)
      models/<version>/       an immutable servable bundle (``core.bundles``)
      CURRENT                 the current version's name, replaced atomically
      data/                   downloads and the decoded-image cache (``core.datasets``)
      collection/             items added, replaced and deleted while serving (``core.collection``)
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

from core.atomic import atomic_write_bytes
from core.runs import RunPaths

DEFAULT_HOME = Path("artifacts")
MANIFEST_FILE = "manifest.json"


def home_from_env(home: str | Path | None = None) -> Path:
    return Path(home or os.environ.get("SIMCLR_HOME") or DEFAULT_HOME)


class ArtifactHome:
    """Paths and the current-version pointer under one ``--home``."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = home_from_env(root)

    runs = property(lambda self: self.root / "runs")
    models = property(lambda self: self.root / "models")
    data = property(lambda self: self.root / "data")
    pointer = property(lambda self: self.root / "CURRENT")
    collection = property(lambda self: self.root / "collection")

    def new_run(self) -> RunPaths:
        run_id = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        path = self.runs / run_id
        n = 1
        while path.exists():
            n += 1
            path = self.runs / f"{run_id}-{n}"
        path.mkdir(parents=True)
        return RunPaths(path)

    def run(self, run_id: str | None = None) -> RunPaths:
        """A named run, or the newest one that has a checkpoint."""
        if run_id:
            path = self.runs / run_id
            if not path.is_dir():
                raise FileNotFoundError(f"no run {run_id!r} under {self.runs}")
            return RunPaths(path)
        runs = [RunPaths(p) for p in self.runs.glob("*")] if self.runs.exists() else []
        runs = [r for r in runs if r.checkpoint.exists()]
        if not runs:
            raise FileNotFoundError(f"no pretraining run under {self.runs}; run `simclr pretrain` first")
        return max(runs, key=lambda r: r.dir.stat().st_mtime)

    def bundle_dir(self, version: str) -> Path:
        return self.models / version

    def current_version(self) -> str | None:
        try:
            version = self.pointer.read_text().strip()
        except FileNotFoundError:
            return None
        return version or None

    def set_current(self, version: str) -> None:
        """Point CURRENT at ``version`` (atomically); it must be a bundle under ``models/``."""
        if not (self.bundle_dir(version) / MANIFEST_FILE).exists():
            raise FileNotFoundError(f"no bundle {version!r} under {self.models}")
        atomic_write_bytes(self.pointer, (version + "\n").encode())

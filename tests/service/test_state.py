"""ModelStore's reload, the seam hot-reload builds on: a broken new version is refused, the served one kept."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from core.home import ArtifactHome
from service.state import ModelStore


def test_store_keeps_serving_when_a_new_version_is_broken(bundle, tmp_path: Path) -> None:
    home = ArtifactHome(tmp_path / "home")
    shutil.copytree(bundle.home, home.root)  # never touch the home the running server uses
    store = ModelStore(home)
    assert store.reload_if_changed() and store.bundle is not None
    good = store.bundle
    assert not store.reload_if_changed() and store.bundle is good  # CURRENT unchanged: nothing loaded

    broken = home.bundle_dir("broken")
    shutil.copytree(home.bundle_dir(bundle.version), broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    (broken / "manifest.json").write_text(json.dumps({**manifest, "version": "broken"}))
    with open(broken / "encoder.pt", "ab") as f:
        f.write(b"tampered")
    home.set_current("broken")
    assert not store.reload_if_changed()
    assert store.bundle is good and "fingerprint" in (store.error or "")

    home.set_current(bundle.version)
    assert store.reload_if_changed() and store.bundle is not good and store.error is None
    assert store.bundle.version == bundle.version

"""Before anything is published the service runs, is alive, and says it is not ready (503)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Bundle
from core.home import ArtifactHome
from service_testkit import Server, start_server, stop_server, uploads

NO_MODEL = "no model published yet"


@pytest.fixture(scope="module")
def empty_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("empty")
    s = start_server(tmp / "home", tmp / "server.log", SIMCLR_RELOAD_INTERVAL="0.2")
    yield s
    stop_server(s)


def test_empty_home(empty_server: Server) -> None:
    png = uploads()["png"][0]
    with empty_server.client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        for r in (
            c.get("/readyz"),
            c.post("/classify", files={"file": ("x.png", png, "image/png")}),
            c.post("/neighbors", files={"file": ("x.png", png, "image/png")}),
            c.get("/neighbors", params={"id": 0}),
            c.get("/images/0"),
            c.get("/model"),
        ):
            assert r.status_code == 503, r.text
            assert NO_MODEL in r.json()["detail"]
        assert c.get("/healthz").status_code == 200
    assert "Traceback" not in empty_server.log_text()


def test_publishing_into_a_running_service_makes_it_ready(empty_server: Server, bundle: Bundle) -> None:
    """The service follows CURRENT: no restart is needed after `simclr refresh` publishes."""
    home = ArtifactHome(Path(empty_server.home))
    shutil.copytree(ArtifactHome(bundle.home).bundle_dir(bundle.version), home.bundle_dir(bundle.version))
    home.set_current(bundle.version)
    deadline = time.monotonic() + 15
    with empty_server.client() as c:
        while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["model_version"] == bundle.version
        r = c.get("/neighbors", params={"id": 0, "k": 3})
        assert r.status_code == 200 and r.json()["model_version"] == bundle.version

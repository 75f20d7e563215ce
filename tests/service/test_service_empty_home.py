"""Before anything is published the service runs, is alive, and says it is not ready (503)."""

from __future__ import annotations

from collections.abc import Iterator
import httpx
import pytest
from service_testkit import Server, start_server, stop_server, uploads

NO_MODEL = "no model published yet"


@pytest.fixture(scope="module")
def empty_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("empty")
    s = start_server(tmp / "home", tmp / "server.log")
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

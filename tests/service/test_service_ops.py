"""What operators touch: the admin token, CORS when configured, /metrics. Real HTTP against ``python -m service``."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Bundle, random_run
from service_testkit import Server, metric, start_server, stop_server

TOKEN = "s3cret-admin-token"
UI = "http://ui.example"


@pytest.fixture(scope="module")
def ops_server(bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Admin enabled, CORS open to one origin, no polling: only /admin/reload notices a new version."""
    tmp = tmp_path_factory.mktemp("ops")
    shutil.copytree(bundle.home, tmp / "home")
    s = start_server(tmp / "home", tmp / "server.log", SIMCLR_ADMIN_TOKEN=TOKEN, SIMCLR_CORS_ORIGINS=UI, SIMCLR_RELOAD_INTERVAL="0")
    yield s
    stop_server(s)


def test_admin_is_disabled_without_a_token(client: httpx.Client) -> None:
    for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
        r = client.post("/admin/reload", headers=headers)
        assert r.status_code == 403 and "SIMCLR_ADMIN_TOKEN" in r.json()["detail"]


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, "Bearer"])
def test_admin_refuses_a_missing_or_wrong_token(ops_server: Server, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    with ops_server.client() as c:
        r = c.post("/admin/reload", headers=headers)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "token" in r.json()["detail"]


def test_admin_reload_loads_a_new_version_now(ops_server: Server, bundle: Bundle, tmp_path: Path) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with ops_server.client() as c:
        r = c.post("/admin/reload", headers=auth)
        assert r.status_code == 200
        assert r.json() == {"model_version": bundle.version, "reloaded": False, "last_error": None}
        # Published, but with polling off the service would not notice on its own.
        new = random_run(tmp_path / "run", bundle.images, bundle.labels, seed=11).publish(ops_server.home)
        assert c.get("/readyz").json()["model_version"] == bundle.version
        assert c.post("/admin/reload", headers=auth).json() == {"model_version": new, "reloaded": True, "last_error": None}
        assert c.get("/readyz").json()["model_version"] == new
        assert c.get("/neighbors", params={"id": 1}).json()["model_version"] == new


def test_cors_open_to_the_configured_origin_only(ops_server: Server) -> None:
    with ops_server.client() as c:
        r = c.get("/model", headers={"Origin": UI})
        assert r.headers["access-control-allow-origin"] == UI
        preflight = c.options("/classify", headers={"Origin": UI, "Access-Control-Request-Method": "POST"})
        assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == UI
        other = c.get("/model", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        refused = c.options("/classify", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
        assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers


def test_metrics(ops_server: Server, bundle: Bundle) -> None:
    with ops_server.client() as c:
        for item in (1, 2, 3):
            assert c.get(f"/images/{item}").status_code == 200
        assert c.get("/images/100000").status_code == 404
        assert c.get("/no/such/page").status_code == 404
        r = c.get("/metrics")
        served = c.get("/readyz").json()["model_version"]
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    # By route template: three ids are one series, not three.
    assert metric(text, "simclr_http_requests_total", method="GET", route="/images/{item_id}", status="200") >= 3
    assert metric(text, "simclr_http_requests_total", method="GET", route="/images/{item_id}", status="404") >= 1
    assert metric(text, "simclr_http_requests_total", method="GET", route="unmatched", status="404") >= 1
    assert "/images/1" not in text and "/no/such/page" not in text
    assert metric(text, "simclr_http_request_duration_seconds_count", method="GET", route="/images/{item_id}") >= 4
    assert metric(text, "simclr_model_info", version=served) == 1
    assert metric(text, "simclr_index_size") == len(bundle.images)
    assert metric(text, "simclr_model_reloads_total") >= 1
    assert metric(text, "simclr_model_refusals_total") == 0
    for name in ("simclr_batch_size", "simclr_model_load_error"):
        assert f"# TYPE {name} " in text

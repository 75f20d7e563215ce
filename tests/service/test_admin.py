"""The admin endpoint (routes/admin.py) over TCP: disabled without a token, refused with a wrong one,
and /admin/reload loading a newly published version at once."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from conftest import TOKEN, Bundle, random_run
from service_testkit import Server


def test_admin_is_disabled_without_a_token(client: httpx.Client) -> None:
    r = client.post("/admin/reload")  # no credentials: 401, as the security scheme declares, saying admin is disabled
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "SIMCLR_ADMIN_TOKEN" in r.json()["detail"] and "disabled" in r.json()["detail"]
    r = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
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

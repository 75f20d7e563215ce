"""DirectRoutes answers the upload routes ahead of FastAPI's router, and changes nothing a client sees."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest

from service.app import create_app
from service.fastpath import DirectRoutes
from service.settings import Settings


def test_direct_routes_keep_the_apps_middleware_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """POST /classify is answered by DirectRoutes, ahead of the router: CORS, metrics, error JSON and 405 still hold."""
    app = create_app(Settings(home=tmp_path, cors_origins=["http://ui.example"]))

    async def go() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                r = await client.post("/classify", files={"file": ("a.png", b"x")}, headers={"Origin": "http://ui.example"})
                assert r.status_code == 503 and "no model" in r.json()["detail"].lower()  # an empty home
                assert r.headers["access-control-allow-origin"] == "http://ui.example"
                assert (await client.get("/classify")).status_code == 405  # other methods: the router, as before
            mounted = httpx.ASGITransport(app=app, raise_app_exceptions=False, root_path="/api")
            async with httpx.AsyncClient(transport=mounted, base_url="http://test") as client:
                assert (await client.post("/api/classify", files={"file": ("a.png", b"x")})).status_code == 503
                assert (await client.post("/apiclassify", files={"file": ("a.png", b"x")})).status_code == 404
            layer = app.middleware_stack  # built by the first request
            while not isinstance(layer, DirectRoutes):
                layer = layer.app
            assert {("POST", "/classify"), ("POST", "/neighbors")} <= set(layer.table)  # not left to the router
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                metrics = (await client.get("/metrics")).text
                assert 'simclr_http_requests_total{method="POST",route="/classify",status="503"} 2.0' in metrics

                def bug(request: object) -> None:
                    raise RuntimeError("a genuine bug")

                monkeypatch.setattr("service.routes.classify.serving", bug)
                r = await client.post("/classify", files={"file": ("a.png", b"x")})
                assert r.status_code == 500 and r.json() == {"detail": "internal server error"}

    anyio.run(go)

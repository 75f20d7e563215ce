"""In-process checks of what HTTP alone cannot reach: settings parsing, the 500 handler, CORS,
and ModelStore's reload (the seam hot-reload builds on)."""

from __future__ import annotations

import gc
import json
import shutil
import time
from pathlib import Path

import anyio
import httpx
import pytest

from service.app import create_app
from service.direct import DirectRoutes
from service.settings import Settings
from service.state import ModelStore
from training.artifacts import ArtifactHome


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert Settings().cors_origins == [] and Settings().max_upload_bytes == 10_000_000
    monkeypatch.setenv("SIMCLR_HOME", str(tmp_path))
    monkeypatch.setenv("SIMCLR_CORS_ORIGINS", "http://a.example, http://b.example")
    monkeypatch.setenv("SIMCLR_TORCH_THREADS", "2")
    s = Settings()
    assert s.home == tmp_path and s.torch_threads == 2
    assert s.cors_origins == ["http://a.example", "http://b.example"]
    monkeypatch.setenv("SIMCLR_CORS_ORIGINS", '["http://c.example"]')
    assert Settings().cors_origins == ["http://c.example"]
    assert Settings(port=9000).port == 9000  # explicit values (the CLI's) win over the environment
    assert Settings().opentelemetry is False
    monkeypatch.setenv("SIMCLR_OPENTELEMETRY", "1")
    assert Settings().opentelemetry is True


def test_bugs_are_json_500_and_cors(tmp_path: Path) -> None:
    app = create_app(Settings(home=tmp_path, cors_origins=["http://ui.example"]))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a genuine bug")

    async def go() -> None:
        # ServerErrorMiddleware answers the 500 and then re-raises (for the server's log): let it.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            r = await client.get("/boom")
            assert r.status_code == 500 and r.json() == {"detail": "internal server error"}
            r = await client.get("/healthz", headers={"Origin": "http://ui.example"})
            assert r.headers["access-control-allow-origin"] == "http://ui.example"

    anyio.run(go)


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


def test_prepared_uploads_decode_to_the_same_pixels_and_a_broken_one_fails_alone() -> None:
    """Thumbnails are left for the model thread to decode (``on_decoded``), bigger images are decoded
    in the threadpool: the same pixels either way. A thumbnail whose data is broken after a good
    header gets its own 400; the rest of its batch is computed."""
    import io

    import numpy as np
    from fastapi import HTTPException
    from PIL import Image

    from service.uploads import INLINE_PIXELS, decode_image, on_decoded, prepare_upload

    rng = np.random.default_rng(0)
    pngs = {}
    for side in (32, 200):  # 32x32 is a thumbnail, 200x200 is not
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
        pngs[side] = buf.getvalue()
        assert (side * side <= INLINE_PIXELS) == (side == 32)
    thumb, big = (anyio.run(prepare_upload, pngs[s], 32, 10**6) for s in (32, 200))
    assert isinstance(thumb, Image.Image) and isinstance(big, np.ndarray)
    broken = anyio.run(prepare_upload, pngs[32][: len(pngs[32]) // 2], 32, 10**6)  # the header survives
    seen: list[list[int]] = []

    def fn(pixels: np.ndarray, rows: list[int]) -> list[np.ndarray]:
        seen.append(rows)
        assert pixels.shape == (len(rows), 3, 32, 32) and pixels.dtype == np.uint8
        return list(pixels)

    got = on_decoded([thumb, broken, big], 32, fn)
    assert seen == [[0, 2]]
    assert np.array_equal(got[0], decode_image(pngs[32], 32, 10**6))
    assert np.array_equal(got[2], decode_image(pngs[200], 32, 10**6))
    assert isinstance(got[1], HTTPException) and got[1].status_code == 400


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


def test_startup_freezes_the_imported_objects_out_of_the_gc(tmp_path: Path) -> None:
    """A full collection must not walk torch's and FastAPI's objects (a stall of ~0.2 s per collection)."""
    app = create_app(Settings(home=tmp_path))
    gc.unfreeze()

    async def go() -> None:
        async with app.router.lifespan_context(app):
            assert gc.get_freeze_count() > 100_000
            start = time.perf_counter()
            gc.collect()
            assert time.perf_counter() - start < 0.05

    try:
        anyio.run(go)
    finally:
        gc.unfreeze()

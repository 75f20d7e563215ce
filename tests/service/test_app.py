"""The app as a whole, in process: the 500 handler, CORS, the start-up's GC freeze, and what the
service may import."""

from __future__ import annotations

import gc
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx

from service.app import create_app
from service.settings import Settings
from service_testkit import REPO


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


def test_the_request_path_imports_no_training_code() -> None:
    """service/ never imports training/ (nor index/'s build stage): in a fresh interpreter, the app
    and the model thread load without them."""
    code = (
        "import sys, service.app, service.model_thread, service.serve\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'training' or m == 'index.build')\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)

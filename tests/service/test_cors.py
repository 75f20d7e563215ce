"""CORS over TCP: closed by default (``server``), open to the configured origin only (``ops_server``)."""

from __future__ import annotations

import httpx

from conftest import UI
from service_testkit import Server


def test_cors_closed_by_default(client: httpx.Client) -> None:
    """No SIMCLR_CORS_ORIGINS: no origin is allowed, and preflights are not answered as CORS."""
    r = client.get("/model", headers={"Origin": "http://elsewhere.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    preflight = client.options(
        "/classify", headers={"Origin": "http://elsewhere.example", "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 405 and "access-control-allow-origin" not in preflight.headers


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

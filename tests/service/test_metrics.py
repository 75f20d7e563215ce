"""/metrics over TCP: requests by route template, latencies, the served model, reloads and refusals."""

from __future__ import annotations

from conftest import Bundle
from service_testkit import Server, metric


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

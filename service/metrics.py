"""Prometheus metrics, in a registry of the app's own (several apps in one process never collide).

Requests are counted by route *template* (``/images/{item_id}``, not each id), so
the number of series stays bounded whatever clients send. What the model store
knows (served version, index size, reloads, refusals) is read at scrape time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.state import ModelStore

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class StoreCollector(Collector):
    """The served model, as gauges and counters read from the store when scraped."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        store, bundle = self.store, self.store.bundle
        info = GaugeMetricFamily("simclr_model_info", "the served model version (1 while served)", labels=["version"])
        if bundle is not None:
            info.add_metric([bundle.version], 1)
        yield info
        yield GaugeMetricFamily("simclr_index_size", "images in the served index", value=bundle.index.ntotal if bundle else 0)
        yield CounterMetricFamily("simclr_model_reloads", "model bundles loaded and swapped in", value=store.reloads)
        yield CounterMetricFamily("simclr_model_refusals", "published versions refused because they failed to load", value=store.refusals)
        refused = GaugeMetricFamily(
            "simclr_model_load_error", "1 while the version CURRENT names is refused (see /readyz last_error)", labels=["version"]
        )
        if store.refused_version is not None:
            refused.add_metric([store.refused_version], 1)
        yield refused


class Metrics:
    def __init__(self, store: ModelStore) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "simclr_http_requests", "HTTP requests by method, route template and status",
            ["method", "route", "status"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "simclr_http_request_duration_seconds", "time to answer, by method and route template",
            ["method", "route"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.batch_size = Histogram(
            "simclr_batch_size", "images per batched forward pass", ["kind"], buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.store_collector = StoreCollector(store)
        self.registry.register(self.store_collector)

    def batch_observer(self, kind: str):  # noqa: ANN201 - a bound observe(), for Batcher(on_batch=...)
        return self.batch_size.labels(kind).observe

    def expose(self) -> bytes:
        """The text exposition. Under several workers (``PROMETHEUS_MULTIPROC_DIR`` set), requests,
        latencies and batch sizes are summed over all of them; the model's metrics are those of the
        worker that answers, each of which follows CURRENT on its own."""
        if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        registry.register(self.store_collector)
        return generate_latest(registry)


class MetricsMiddleware:
    """Counts and times every HTTP request. Pure ASGI: it must also see the answers other middleware gives."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # unless a response starts: an exception escaping the app is answered 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The router records the matched route in the scope; no match (404s, preflights) is one label.
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - start)


router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request) -> Response:
    """Prometheus metrics: requests, latencies, batch sizes, the served model, reloads and refusals."""
    return Response(request.app.state.metrics.expose(), media_type=CONTENT_TYPE_LATEST)

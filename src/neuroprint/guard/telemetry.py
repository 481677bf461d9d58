"""Prometheus metrics of a guard service, in a registry of its own (so two services in one process never clash).

Exposed at `GET /metrics`: requests by route and status, images scored, images flagged (by any detector and per
detector), request latency, micro-batch sizes and model time per batch.
"""
from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from neuroprint.guard.guard import GuardScores


class ServiceMetrics:
    """The service's counters and histograms; `render()` is the Prometheus text exposition."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("neuroprint_requests", "HTTP requests by route and status code",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("neuroprint_request_seconds", "HTTP request latency (seconds)", ["route"],
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                                 registry=self.registry)
        self.images = Counter("neuroprint_images", "images classified and scored", registry=self.registry)
        self.flagged = Counter("neuroprint_flagged", "images flagged by any detector", registry=self.registry)
        self.flagged_by = Counter("neuroprint_flagged_by_detector", "images flagged, per detector", ["detector"],
                                  registry=self.registry)
        self.batch_size = Histogram("neuroprint_batch_images", "images per micro-batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)
        self.batch_seconds = Histogram("neuroprint_batch_seconds", "model and detector time per micro-batch (seconds)",
                                       registry=self.registry)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def observe_batch(self, images: int, seconds: float) -> None:
        self.batch_size.observe(images)
        self.batch_seconds.observe(seconds)

    def observe_verdicts(self, scores: GuardScores) -> None:
        self.images.inc(len(scores))
        self.flagged.inc(int(scores.flagged.sum()))
        for key, flags in scores.flags.items():
            self.flagged_by.labels(detector=key).inc(int(flags.sum()))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetrics:
    """Pure ASGI middleware that counts and times every request by route and status. (Not `@app.middleware("http")`:
    Starlette's BaseHTTPMiddleware reads the body in a task group, which wraps an exception raised by `receive`,
    such as BodyLimit's PayloadTooLarge, in an ExceptionGroup that no exception handler matches: a 500.)"""

    def __init__(self, app: Any, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def observed(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            route = scope.get("route")
            self.metrics.observe_request(getattr(route, "path", "unmatched"), status, time.perf_counter() - start)

"""Prometheus metrics for one app: requests and latency per route, tokens generated, index size,
generation queue depth, active adapters. A registry per app, so tests can build many apps."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ragtune_requests_total", "HTTP requests", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "ragtune_request_seconds", "HTTP request latency", ["route", "method"], registry=r
        )
        self.tokens = Counter("ragtune_generated_tokens_total", "tokens generated", registry=r)
        self.documents = Gauge("ragtune_index_documents", "documents in the index", registry=r)
        self.chunks = Gauge("ragtune_index_chunks", "chunks in the vector index", registry=r)
        self.queue = Gauge(
            "ragtune_generation_queue_depth", "requests waiting to generate", registry=r
        )
        self.batch_size = Histogram(
            "ragtune_generation_batch_size",
            "requests decoded together in one batch",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.adapters = Gauge(
            "ragtune_active_adapters", "adapters loaded on the generator", registry=r
        )

    async def middleware(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route: Any = request.scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.requests.labels(path, request.method, str(status)).inc()
            self.latency.labels(path, request.method).observe(time.perf_counter() - start)

    def render(self, state: Any) -> Response:
        if state.retriever is not None:
            self.documents.set(len(state.retriever))
            self.chunks.set(state.retriever.chunk_count)
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

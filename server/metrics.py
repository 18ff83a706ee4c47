"""Optional Prometheus metrics, served over HTTP on a separate port (`--metrics-port`).

- `pegasus_requests_total{method, code}`: finished RPCs by gRPC status name;
- `pegasus_request_seconds{method}`: latency histogram (queue + generation + encoding);
- `pegasus_batch_size`: requests per `generate` call (the point of the batching worker);
- `pegasus_queue_depth`: requests waiting for the worker, read when scraped.

Each server gets its own `CollectorRegistry`, so several servers (tests) can live in one process.
"""

from __future__ import annotations

from collections.abc import Callable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    """The server's metrics in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pegasus_requests",
            "Finished RPCs by method and gRPC status.",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "pegasus_request_seconds",
            "RPC latency in seconds.",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "pegasus_batch_size",
            "Requests per generate() call.",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "pegasus_queue_depth",
            "Requests waiting for the batching worker.",
            registry=self.registry,
        )
        self._http: WSGIServer | None = None

    def on_request(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method=method, code=code).inc()
        self.latency.labels(method=method).observe(seconds)

    def on_batch(self, size: int) -> None:
        self.batch_size.observe(size)

    def track_queue(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(depth)

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP exporter; returns the bound port (useful with port 0)."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return int(self._http.server_port)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

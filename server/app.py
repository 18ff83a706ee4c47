"""One serving process: gRPC server, health, reflection, optional TLS/auth/metrics, drain.

Lifecycle (what `pegasus-gsg serve` / `python -m pegasus_gsg.server` and the tests drive):

1. `start()`: bind the port (127.0.0.1 unless told otherwise; port 0 = pick a free one) and
   answer health checks with NOT_SERVING; Summarizer RPCs get UNAVAILABLE;
2. `load()`: load the model, start the batching worker, switch health to SERVING;
3. `shutdown()` (SIGTERM): health NOT_SERVING at once, so load balancers stop routing here;
   after `drain_delay` new RPCs are refused and in-flight ones get up to `grace` seconds to
   finish; then the worker stops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pegasus_gsg.serving.protos import SERVICE_NAME, pb2_grpc

from .auth import BearerTokenInterceptor
from .batcher import Batcher
from .metrics import ServerMetrics
from .service import SummarizerService

if TYPE_CHECKING:
    from .summarizer import SummarizerModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ListenConfig:
    """Network-facing settings."""

    host: str = "127.0.0.1"
    """Address to bind; 127.0.0.1 by default so nothing is exposed unless asked."""
    port: int = 50051
    """TCP port to bind, 0..65535; 0 = let the OS pick (the bound port is returned by
    `start`)."""
    max_workers: int = 64
    """gRPC handler threads, and the most concurrent RPCs (more get RESOURCE_EXHAUSTED); >= 1."""
    max_message_bytes: int = 4 * 1024 * 1024
    """Largest request or response message in bytes; >= 1024."""
    tls_cert: Path | None = None
    """PEM certificate chain to serve TLS with (an existing file, given with tls_key); None =
    plaintext."""
    tls_key: Path | None = None
    """PEM private key of tls_cert (an existing file, given with tls_cert)."""
    auth_token: str | None = None
    """Bearer token every RPC must carry (`authorization: Bearer TOKEN`); None = no auth."""
    metrics_port: int | None = None
    """Prometheus exporter port on `host`, 0..65535 (0 = the OS picks); None = no metrics."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be in 0..65535 or None, got {self.metrics_port}")
        if self.max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {self.max_workers}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be >= 1024, got {self.max_message_bytes}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        for name in ("tls_cert", "tls_key"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"{name} file {path} does not exist")


class SummarizerServer:
    """Owns the grpc.Server, the health servicer, the model and the batcher."""

    def __init__(self, listen: ListenConfig, model_factory: Callable[[], SummarizerModel]) -> None:
        """`model_factory()` returns a loaded `SummarizerModel`; called by `load()`."""
        self.listen = listen
        self._model_factory = model_factory
        self.metrics = ServerMetrics() if listen.metrics_port is not None else None
        self.metrics_port: int | None = None
        self.service = SummarizerService(
            on_request=self.metrics.on_request if self.metrics else None
        )
        self.health = health.HealthServicer()
        self.batcher: Batcher | None = None
        self.port: int | None = None
        self._stopped = threading.Event()
        interceptors = [BearerTokenInterceptor(listen.auth_token)] if listen.auth_token else []
        options = [
            ("grpc.max_receive_message_length", listen.max_message_bytes),
            ("grpc.max_send_message_length", listen.max_message_bytes),
            ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share
        ]
        self.grpc_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=listen.max_workers, thread_name_prefix="rpc"),
            interceptors=interceptors,
            options=options,
            maximum_concurrent_rpcs=listen.max_workers,
        )
        pb2_grpc.add_SummarizerServicer_to_server(self.service, self.grpc_server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc_server
        )
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

    def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    @property
    def address(self) -> str:
        return f"{self.listen.host}:{self.port}"

    def start(self) -> int:
        """Bind and start answering (health NOT_SERVING); returns the bound port."""
        bind = f"{self.listen.host}:{self.listen.port}"
        if self.listen.tls_cert is not None:
            key = self.listen.tls_key
            if key is None:  # ListenConfig refuses a certificate without its key
                raise ValueError("tls_cert and tls_key must be given together")
            credentials = grpc.ssl_server_credentials(
                [(Path(key).read_bytes(), Path(self.listen.tls_cert).read_bytes())]
            )
            port = self.grpc_server.add_secure_port(bind, credentials)
        else:
            port = self.grpc_server.add_insecure_port(bind)
        if port == 0:
            raise ValueError(f"could not bind {bind} (in use or not a local address?)")
        self.port = port
        self.grpc_server.start()
        if self.metrics is not None and self.listen.metrics_port is not None:
            self.metrics_port = self.metrics.serve(self.listen.host, self.listen.metrics_port)
        logger.info(
            "listening on %s (%s%s)",
            self.address,
            "TLS" if self.listen.tls_cert else "plaintext",
            ", bearer-token auth" if self.listen.auth_token else "",
        )
        return int(port)

    def load(self) -> None:
        """Load the model, start the batching worker and report SERVING."""
        model = self._model_factory()
        batcher = Batcher(model, on_batch=self.metrics.on_batch if self.metrics else None)
        self.batcher = batcher
        if self.metrics is not None:
            self.metrics.track_queue(batcher.queue_depth)
        self.service.attach(model, batcher)
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        logger.info("serving %s", model.model_dir)

    def shutdown(self, grace: float = 10.0, drain_delay: float = 0.0) -> None:
        """NOT_SERVING, wait `drain_delay`, refuse new RPCs, let in-flight ones finish."""
        if self._stopped.is_set():
            return
        logger.info("shutting down: draining for up to %.1f s", drain_delay + grace)
        self.health.enter_graceful_shutdown()  # every service NOT_SERVING, and stays so
        if drain_delay > 0:
            time.sleep(drain_delay)
        self.grpc_server.stop(grace).wait()
        if self.batcher is not None:
            self.batcher.close(timeout=grace)
        if self.metrics is not None:
            self.metrics.close()
        self._stopped.set()
        logger.info("stopped")

    def wait(self) -> None:
        """Block until `shutdown` has finished, waking often so signal handlers run promptly."""
        while not self._stopped.wait(0.5):
            pass

"""A small Python client for the summarization server (proto/summarizer.proto).

```python
with SummarizerClient("127.0.0.1:50051", timeout=30) as client:
    print(client.summarize(text, max_new_tokens=64).summary)
```

Retries: only UNAVAILABLE (server starting, restarting or unreachable) is retried, by gRPC's
own retry machinery (a channel service config with exponential backoff and jitter), so a retry
never outlives the call's deadline. Every other status -- INVALID_ARGUMENT, RESOURCE_EXHAUSTED,
DEADLINE_EXCEEDED, UNAUTHENTICATED -- reaches the caller at once as a `grpc.RpcError`: retrying
a bad request cannot help, and retrying a deadline or an overloaded server makes things worse.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pegasus_gsg.serving.auth import AUTH_METADATA_KEY, bearer, read_token
from pegasus_gsg.serving.protos import SERVICE_NAME, pb2, pb2_grpc

MAX_ATTEMPTS_LIMIT = 5
"""gRPC caps retry attempts at 5 (silently); we refuse more instead."""


def retry_service_config(max_attempts: int) -> str:
    """A gRPC service config that retries UNAVAILABLE only, up to `max_attempts` tries in all."""
    policy = {
        "maxAttempts": max_attempts,
        "initialBackoff": "0.1s",
        "maxBackoff": "2s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    method_config: dict[str, Any] = {"name": [{"service": SERVICE_NAME}]}
    if max_attempts > 1:
        method_config["retryPolicy"] = policy
    return json.dumps({"methodConfig": [method_config]})


class SummarizerClient:
    """Summarizer RPCs over one channel; use as a context manager or call `close()`."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = 60.0,
        max_attempts: int = 4,
        token: str | None = None,
        root_certificates: bytes | None = None,
        max_message_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        """
        Args:
            target: `host:port` of the server.
            timeout: default deadline in seconds for each call (None = no deadline).
            max_attempts: tries in all for a call that fails with UNAVAILABLE (1..5).
            token: bearer token, sent as `authorization: Bearer <token>` metadata.
            root_certificates: PEM CA certificate(s); given = TLS channel.
        """
        if not 1 <= max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise ValueError(f"max_attempts must be in 1..{MAX_ATTEMPTS_LIMIT}, got {max_attempts}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.target = target
        self.timeout = timeout
        options = [
            ("grpc.enable_retries", 1),
            ("grpc.service_config", retry_service_config(max_attempts)),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if root_certificates is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self.channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self._metadata = ((AUTH_METADATA_KEY, bearer(token)),) if token else ()
        self.stub = pb2_grpc.SummarizerStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    @classmethod
    def from_files(
        cls,
        target: str,
        *,
        token_file: Path | None = None,
        tls_ca: Path | None = None,
        **kwargs: Any,
    ) -> SummarizerClient:
        """Like the constructor, reading the token and CA certificate from files."""
        token = read_token(token_file) if token_file is not None else None
        if tls_ca is not None and not Path(tls_ca).is_file():
            raise FileNotFoundError(f"TLS CA file {tls_ca} does not exist")
        roots = Path(tls_ca).read_bytes() if tls_ca is not None else None
        return cls(target, token=token, root_certificates=roots, **kwargs)

    def __enter__(self) -> SummarizerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _timeout(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    @staticmethod
    def _overlong(truncate: bool) -> int:
        return int(pb2.OVERLONG_POLICY_TRUNCATE if truncate else pb2.OVERLONG_POLICY_REJECT)

    def summarize(
        self, text: str, *, truncate: bool = False, timeout: float | None = None, **options: Any
    ) -> pb2.SummarizeResponse:
        """One summary. `options` are GenerationOptions fields (max_new_tokens=..., ...)."""
        request = pb2.SummarizeRequest(
            text=text, options=pb2.GenerationOptions(**options), overlong=self._overlong(truncate)
        )
        return self.stub.Summarize(request, timeout=self._timeout(timeout), metadata=self._metadata)

    def summarize_batch(
        self,
        texts: Sequence[str],
        *,
        truncate: bool = False,
        timeout: float | None = None,
        **options: Any,
    ) -> list[pb2.SummarizeResponse]:
        """Summaries of many texts with the same options, in order."""
        request = pb2.SummarizeBatchRequest(
            texts=list(texts),
            options=pb2.GenerationOptions(**options),
            overlong=self._overlong(truncate),
        )
        reply = self.stub.SummarizeBatch(
            request, timeout=self._timeout(timeout), metadata=self._metadata
        )
        return list(reply.results)

    def summarize_stream(
        self, text: str, *, truncate: bool = False, timeout: float | None = None, **options: Any
    ) -> Iterator[pb2.SummarizeStreamResponse]:
        """Stream of text deltas; the last message has `done` and `final` set."""
        request = pb2.SummarizeRequest(
            text=text, options=pb2.GenerationOptions(**options), overlong=self._overlong(truncate)
        )
        stream: Iterator[pb2.SummarizeStreamResponse] = self.stub.SummarizeStream(
            request, timeout=self._timeout(timeout), metadata=self._metadata
        )
        return stream

    def model_info(self, timeout: float | None = None) -> pb2.ModelInfo:
        return self.stub.GetModelInfo(
            pb2.GetModelInfoRequest(), timeout=self._timeout(timeout), metadata=self._metadata
        )

    def health(self, service: str = "", timeout: float | None = 5.0) -> str:
        """SERVING, NOT_SERVING, ... from the standard health service."""
        reply = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

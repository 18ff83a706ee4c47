"""A small Python client for the summarization server (proto/summarizer.proto).

```python
with SummarizerClient("127.0.0.1:50051", timeout=30) as client:
    print(client.summarize(text, max_new_tokens=64).summary)
```

Replicas: one channel spreads calls over every address it resolves, round robin. The target
is one `host:port` (a DNS name resolving to several replicas, e.g. a Kubernetes headless
Service, counts as several), a comma-separated list of IP addresses (`10.0.0.5:50051,10.0.0.6:
50051`, sent to gRPC as an `ipv4:`/`ipv6:` target), or any gRPC target URI (`dns:///...`).
The channel also watches each replica's standard health service and sends nothing to one that
says NOT_SERVING (loading its model, or draining before it stops).

Retries: only UNAVAILABLE (server starting, restarting or unreachable) is retried, by gRPC's
own retry machinery (a channel service config with exponential backoff and jitter), so a retry
never outlives the call's deadline and, with round robin, goes to the next replica. Retries
are bounded twice: `max_attempts` per call, and a channel-wide throttle that stops retrying
once failures persist (a dead fleet is not hammered; see `retry_service_config`). Every other
status -- INVALID_ARGUMENT, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, UNAUTHENTICATED -- reaches
the caller at once as a `grpc.RpcError`: retrying a bad request cannot help, and retrying a
deadline or an overloaded server makes things worse.
"""

from __future__ import annotations

import ipaddress
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
TARGET_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:")
"""gRPC name-resolver schemes: a target starting with one is passed to gRPC as it is."""


def channel_target(addresses: str) -> str:
    """The gRPC target for `host:port`, `ip:port,ip:port,...` or a gRPC target URI.

    Several addresses must all be IPv4 or all IPv6 literals (gRPC's `ipv4:`/`ipv6:` schemes
    take a list; its DNS resolver takes one name): for several host names, give one DNS name
    that resolves to all of them.
    """
    if addresses.startswith(TARGET_SCHEMES):
        return addresses
    parts = [part.strip() for part in addresses.split(",")]
    if not all(parts):
        raise ValueError(f"server address list {addresses!r} has an empty entry")
    if len(parts) == 1:
        return parts[0]
    families = {_ip_family(part, addresses) for part in parts}
    if len(families) > 1:
        raise ValueError(f"server addresses {addresses!r} mix IPv4 and IPv6; use one family")
    return f"{families.pop()}:{','.join(parts)}"


def _ip_family(address: str, addresses: str) -> str:
    """`ipv4` or `ipv6` for an `ip:port` / `[ip]:port` literal; ValueError otherwise."""
    host, sep, port = address.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        ip = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        ip = None
    if not sep or not port.isdigit() or ip is None or (ip.version == 6) != bracketed:
        raise ValueError(
            f"server address {address!r} in {addresses!r}: several addresses must be IP "
            "literals, 'a.b.c.d:port' or '[v6]:port' (for host names give one DNS name that "
            "resolves to every replica)"
        )
    return f"ipv{ip.version}"


def retry_service_config(max_attempts: int, *, health_check: bool = True) -> str:
    """A gRPC service config: round robin over (healthy) replicas, retry UNAVAILABLE only.

    `health_check` = send nothing to a replica whose health service says NOT_SERVING for
    the Summarizer (a server without the health service counts as healthy).

    `max_attempts` is the tries in all per call. `retryThrottling` (gRPC's token bucket) stops
    retrying on the channel after a burst of about 50 UNAVAILABLE failures, or while more than
    about one call in eleven fails: tokens start at 100, each UNAVAILABLE takes 1, each success
    gives 0.1, and retries pause while 50 or fewer are left.
    """
    policy = {
        "maxAttempts": max_attempts,
        "initialBackoff": "0.1s",
        "maxBackoff": "2s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    method_config: dict[str, Any] = {"name": [{"service": SERVICE_NAME}]}
    config: dict[str, Any] = {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [method_config],
    }
    if health_check:
        config["healthCheckConfig"] = {"serviceName": SERVICE_NAME}
    if max_attempts > 1:
        method_config["retryPolicy"] = policy
        config["retryThrottling"] = {"maxTokens": 100, "tokenRatio": 0.1}
    return json.dumps(config)


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
        skip_unhealthy: bool = True,
    ) -> None:
        """
        Args:
            target: `host:port` of the server, `ip:port,ip:port,...` of several replicas,
                or a gRPC target URI (see `channel_target`).
            timeout: default deadline in seconds for each call (None = no deadline).
            max_attempts: tries in all for a call that fails with UNAVAILABLE (1..5).
            token: bearer token, sent as `authorization: Bearer <token>` metadata.
            root_certificates: PEM CA certificate(s); given = TLS channel.
            skip_unhealthy: send no call to a replica whose health says NOT_SERVING (loading
                or draining). Then a call while no replica serves fails with UNAVAILABLE
                "backend unhealthy" from the channel instead of the server's own message.
        """
        if not 1 <= max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise ValueError(f"max_attempts must be in 1..{MAX_ATTEMPTS_LIMIT}, got {max_attempts}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.target = channel_target(target)
        self.timeout = timeout
        self._root_certificates = root_certificates
        self._max_message_bytes = max_message_bytes
        self.channel = self._channel(
            retry_service_config(max_attempts, health_check=skip_unhealthy)
        )
        # Health checks take a channel of their own that does not skip unhealthy replicas:
        # on the main one, a replica saying NOT_SERVING could not even be asked.
        self._health_channel = self._channel(retry_service_config(1, health_check=False))
        self._metadata = ((AUTH_METADATA_KEY, bearer(token)),) if token else ()
        self.stub = pb2_grpc.SummarizerStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self._health_channel)

    def _channel(self, service_config: str) -> grpc.Channel:
        """A channel to `self.target` (it connects on its first call)."""
        options = [
            ("grpc.enable_retries", 1),
            ("grpc.service_config", service_config),
            ("grpc.max_receive_message_length", self._max_message_bytes),
            ("grpc.max_send_message_length", self._max_message_bytes),
        ]
        if self._root_certificates is None:
            return grpc.insecure_channel(self.target, options=options)
        credentials = grpc.ssl_channel_credentials(root_certificates=self._root_certificates)
        return grpc.secure_channel(self.target, credentials, options=options)

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
        self._health_channel.close()

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
        """SERVING, NOT_SERVING, ... from the standard health service (of one replica)."""
        reply = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

"""Optional bearer-token authentication as a gRPC server interceptor.

Every RPC must carry the metadata `authorization: Bearer <token>` (the convention is
pegasus_gsg/auth.py's); otherwise it ends with UNAUTHENTICATED before reaching the servicer.
Health checks are exempt so that orchestrators (Docker HEALTHCHECK, Kubernetes probes) need no
secret. Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import grpc

from pegasus_gsg.serving.auth import AUTH_METADATA_KEY, bearer

HEALTH_PREFIX = "/grpc.health.v1.Health/"


def _deny_like(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind (unary/stream) as `handler` that rejects the call."""

    def deny(request_or_iterator: Any, context: grpc.ServicerContext) -> None:
        context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            f"missing or wrong bearer token (metadata '{AUTH_METADATA_KEY}: {bearer('<token>')}')",
        )

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny)
    return grpc.unary_unary_rpc_method_handler(deny)


class BearerTokenInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]  # grpc: no stubs
    """Rejects calls without the right `authorization` metadata; health is exempt."""

    def __init__(self, token: str, exempt_prefixes: tuple[str, ...] = (HEALTH_PREFIX,)) -> None:
        if not token:
            raise ValueError("auth token must not be empty")
        self._expected = bearer(token).encode()
        self._exempt = exempt_prefixes

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(self._exempt):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = metadata.get(AUTH_METADATA_KEY, "")
        if isinstance(given, str):
            given = given.encode()
        if hmac.compare_digest(given, self._expected):
            return handler
        return _deny_like(handler)

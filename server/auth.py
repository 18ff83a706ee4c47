"""Optional bearer-token authentication as a gRPC server interceptor.

Every RPC must carry the metadata `authorization: Bearer <token>`; otherwise it ends with
UNAUTHENTICATED before reaching the servicer. Health checks are exempt so that orchestrators
(Docker HEALTHCHECK, Kubernetes probes) need no secret. Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
from pathlib import Path

import grpc

HEALTH_PREFIX = "/grpc.health.v1.Health/"


def read_token(path: str | Path) -> str:
    """The token in a file (surrounding whitespace removed).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is empty.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"auth token file {path} does not exist")
    token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise ValueError(f"auth token file {path} is empty")
    return token


def _deny_like(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind (unary/stream) as `handler` that rejects the call."""

    def deny(request_or_iterator, context):
        context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            "missing or wrong bearer token (metadata 'authorization: Bearer <token>')",
        )

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny)
    return grpc.unary_unary_rpc_method_handler(deny)


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Rejects calls without the right `authorization` metadata; health is exempt."""

    def __init__(self, token: str, exempt_prefixes: tuple[str, ...] = (HEALTH_PREFIX,)) -> None:
        if not token:
            raise ValueError("auth token must not be empty")
        self._expected = f"Bearer {token}".encode()
        self._exempt = exempt_prefixes

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(self._exempt):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = metadata.get("authorization", "")
        if isinstance(given, str):
            given = given.encode()
        if hmac.compare_digest(given, self._expected):
            return handler
        return _deny_like(handler)

"""`python -m pegasus_gsg.server.healthcheck [--target 127.0.0.1:50051]`: exit 0 iff SERVING.

Uses the standard gRPC health service (what Docker HEALTHCHECK and Kubernetes gRPC probes
call), so it needs no auth token.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(target: str, service: str = "", timeout: float = 3.0, tls_ca: Path | None = None) -> str:
    """The health status name (SERVING, NOT_SERVING, ...) or the gRPC error code name."""
    if tls_ca is not None:
        credentials = grpc.ssl_channel_credentials(root_certificates=Path(tls_ca).read_bytes())
        channel = grpc.secure_channel(target, credentials)
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as err:
            return str(err.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pegasus_gsg.server.healthcheck", description=__doc__
    )
    p.add_argument("--target", default="127.0.0.1:50051")
    p.add_argument("--service", default="", help="service name ('' = the whole server)")
    p.add_argument("--timeout", type=float, default=3.0)
    p.add_argument("--tls-ca", type=Path, help="CA certificate when the server uses TLS")
    args = p.parse_args(argv)
    status = check(args.target, args.service, args.timeout, args.tls_ca)
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())

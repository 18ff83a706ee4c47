"""Bearer-token auth and TLS on a real server: wrong or missing credentials are refused."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from pegasus_gsg.server.app import SummarizerServer

from pegasus_gsg.serving.client import SummarizerClient
from tests._server_helpers import fitting_docs, rpc_error, running_server

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def doc(tiny_summarizer_dir: Path) -> str:
    return fitting_docs(tiny_summarizer_dir, 1)[0]


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 (and localhost), made with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available")
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def auth_server(tiny_summarizer_dir: Path) -> Iterator[SummarizerServer]:
    with running_server(tiny_summarizer_dir, auth_token=TOKEN) as app:
        yield app


def test_calls_without_the_right_token_are_unauthenticated(auth_server, doc):
    for token in (None, "wrong-token", TOKEN + "x"):
        with SummarizerClient(auth_server.address, token=token, max_attempts=1) as client:
            for call in (client.summarize, client.summarize_stream):
                err = rpc_error(call, doc)
                assert err.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "bearer token" in err.details()
            assert rpc_error(client.model_info).code() == grpc.StatusCode.UNAUTHENTICATED
            assert client.health() == "SERVING"  # health checks need no token


def test_calls_with_the_token_are_served(auth_server, doc):
    with SummarizerClient(auth_server.address, token=TOKEN) as client:
        assert client.summarize(doc).summary
        assert "".join(m.text_delta for m in client.summarize_stream(doc))
    assert auth_server.service.batcher.stats().requests_completed == 2


def test_tls_accepts_its_ca_and_refuses_plaintext_and_strangers(tiny_summarizer_dir, doc, tmp_path):
    cert, key = self_signed(tmp_path, "server")
    other, _ = self_signed(tmp_path, "stranger")
    with running_server(tiny_summarizer_dir, tls_cert=cert, tls_key=key) as app:
        with SummarizerClient(app.address, root_certificates=cert.read_bytes()) as client:
            reply = client.summarize(doc)
            assert reply.summary and client.health() == "SERVING"
        with SummarizerClient(app.address, max_attempts=1, timeout=10) as plaintext:
            assert rpc_error(plaintext.summarize, doc).code() == grpc.StatusCode.UNAVAILABLE
        with SummarizerClient(
            app.address, root_certificates=other.read_bytes(), max_attempts=1, timeout=10
        ) as stranger:
            assert rpc_error(stranger.summarize, doc).code() == grpc.StatusCode.UNAVAILABLE
        assert app.service.batcher.stats().requests_completed == 1


def test_tls_and_auth_together(tiny_summarizer_dir, doc, tmp_path):
    cert, key = self_signed(tmp_path, "server")
    roots = cert.read_bytes()
    with running_server(tiny_summarizer_dir, tls_cert=cert, tls_key=key, auth_token=TOKEN) as app:
        with SummarizerClient(app.address, root_certificates=roots, max_attempts=1) as anonymous:
            err = rpc_error(anonymous.summarize, doc)
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        with SummarizerClient(app.address, root_certificates=roots, token=TOKEN) as client:
            assert client.summarize(doc).summary

"""The client and `pegasus-gsg summarize` retry UNAVAILABLE and nothing else.

A scripted Summarizer servicer on a real port answers the first N attempts with a chosen status
and counts attempts, so the retry policy is observed from the server side.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from pegasus_gsg import cli
from pegasus_gsg.serving.client import SummarizerClient, retry_service_config
from pegasus_gsg.serving.protos import pb2, pb2_grpc
from tests._server_helpers import rpc_error


class ScriptedServicer(pb2_grpc.SummarizerServicer):
    """Fails the first `failures` attempts with `code`, then echoes a summary."""

    def __init__(self) -> None:
        self.code = grpc.StatusCode.UNAVAILABLE
        self.failures = 0
        self.attempts = 0
        self.metadata: list[dict] = []
        self._lock = threading.Lock()

    def script(self, code: grpc.StatusCode, failures: int) -> None:
        self.code, self.failures, self.attempts = code, failures, 0

    def Summarize(self, request, context):
        with self._lock:
            self.attempts += 1
            attempt = self.attempts
        self.metadata.append(dict(context.invocation_metadata()))
        if not request.text:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "text is empty")
        if attempt <= self.failures:
            context.abort(self.code, f"scripted failure {attempt}")
        return pb2.SummarizeResponse(
            summary=f"summary of {request.text} ({request.options.max_new_tokens})",
            input_tokens=len(request.text.split()),
        )


@pytest.fixture(scope="module")
def scripted() -> Iterator[tuple[ScriptedServicer, str]]:
    servicer = ScriptedServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb2_grpc.add_SummarizerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0)


def test_unavailable_is_retried_until_it_succeeds(scripted):
    servicer, target = scripted
    servicer.script(grpc.StatusCode.UNAVAILABLE, failures=2)
    with SummarizerClient(target, max_attempts=3, timeout=30) as client:
        assert client.summarize("hello world").summary.startswith("summary of hello world")
    assert servicer.attempts == 3


def test_unavailable_gives_up_after_max_attempts(scripted):
    servicer, target = scripted
    servicer.script(grpc.StatusCode.UNAVAILABLE, failures=10)
    with SummarizerClient(target, max_attempts=2, timeout=30) as client:
        err = rpc_error(client.summarize, "hello")
    assert err.code() == grpc.StatusCode.UNAVAILABLE and servicer.attempts == 2


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAUTHENTICATED,
    ],
)
def test_other_errors_are_not_retried(scripted, code):
    servicer, target = scripted
    servicer.script(code, failures=1)
    with SummarizerClient(target, max_attempts=4, timeout=30) as client:
        assert rpc_error(client.summarize, "hello").code() == code
    assert servicer.attempts == 1


def test_client_sends_bearer_token_and_options(scripted):
    servicer, target = scripted
    servicer.script(grpc.StatusCode.OK, failures=0)
    with SummarizerClient(target, token="abc") as client:
        assert client.summarize("x y", max_new_tokens=7).summary == "summary of x y (7)"
    assert servicer.metadata[-1]["authorization"] == "Bearer abc"


def test_client_rejects_bad_settings():
    with pytest.raises(ValueError, match=r"max_attempts must be in 1\.\.5, got 6"):
        SummarizerClient("127.0.0.1:1", max_attempts=6)
    with pytest.raises(ValueError, match="timeout must be > 0 seconds"):
        SummarizerClient("127.0.0.1:1", timeout=0)
    policy = json.loads(retry_service_config(3))["methodConfig"][0]["retryPolicy"]
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"] and policy["maxAttempts"] == 3


def test_cli_retries_unavailable_only(scripted, capsys):
    servicer, target = scripted
    servicer.script(grpc.StatusCode.UNAVAILABLE, failures=2)
    base = ["summarize", "--server", target, "--max-new-tokens", "5"]
    assert cli.main([*base, "--retries", "2", "some text"]) == 0
    assert capsys.readouterr().out == "summary of some text (5)\n"
    assert servicer.attempts == 3

    servicer.script(grpc.StatusCode.UNAVAILABLE, failures=2)
    assert cli.main([*base, "--retries", "0", "some text"]) == 1
    assert "error: UNAVAILABLE: scripted failure 1" in capsys.readouterr().err
    assert servicer.attempts == 1

    servicer.script(grpc.StatusCode.RESOURCE_EXHAUSTED, failures=1)
    assert cli.main([*base, "--retries", "3", "some text"]) == 1
    assert "error: RESOURCE_EXHAUSTED: scripted failure 1" in capsys.readouterr().err
    assert servicer.attempts == 1


def test_cli_input_file_errors_name_the_line(scripted, tmp_path, capsys):
    _, target = scripted
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"document": "ok"}\n{"document": 3}\n')
    assert cli.main(["summarize", "--server", target, "--input", str(bad)]) == 1
    assert f"{bad}:2: expected an object with a string 'document'" in capsys.readouterr().err
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"document": "ok"}\n\n{"document": \n')
    assert cli.main(["summarize", "--server", target, "--input", str(broken)]) == 1
    assert f"{broken}:3: not valid JSON" in capsys.readouterr().err
    assert cli.main(["summarize", "--server", target]) == 1
    assert "give either TEXT or --input FILE.jsonl" in capsys.readouterr().err


def test_cli_input_file_goes_to_stdout_in_order(scripted, tmp_path, capsys):
    servicer, target = scripted
    servicer.script(grpc.StatusCode.OK, failures=0)
    source = tmp_path / "in.jsonl"
    texts = [f"text number {i}" for i in range(20)]
    source.write_text(
        "".join(json.dumps({"id": i, "document": t}) + "\n" for i, t in enumerate(texts))
    )
    argv = ["summarize", "--server", target, "--input", str(source), "--concurrency", "6"]
    assert cli.main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in rows] == list(range(20))
    assert [r["summary"] for r in rows] == [f"summary of {t} (0)" for t in texts]

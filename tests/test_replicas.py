"""Serving across replicas: one client channel, round robin, retries across a replica's death.

The end-to-end test runs two real `python -m pegasus_gsg.server` processes on 127.0.0.1, sends
load at concurrency 16 through ONE `SummarizerClient` holding both addresses, SIGKILLs one
replica mid-load and restarts it on the same port. Every call must succeed (the calls that
were in flight on the killed replica are retried on the other), and the restarted replica must
take load again; each replica's Prometheus counter shows the spread.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc._cython import cygrpc  # channelz: per-channel call counts (retries are not public)

from pegasus_gsg.serving.client import SummarizerClient, channel_target, retry_service_config
from pegasus_gsg.serving.protos import SERVICE_NAME
from tests._server_helpers import fitting_docs, rpc_error, running_server, wait_for

REPO = Path(__file__).resolve().parents[1]
CONCURRENCY = 16
MAX_REQUESTS = 500
"""Bound on the load test: it stops as soon as the restarted replica has served enough."""
RECOVERY_PAUSE = 2.0
"""Seconds each worker waits between calls once the replica is killed: a restart (imports,
model load) takes 10-30 s on a busy machine, and full-speed load would spend the request
budget before it is back. Until the kill, calls go back to back, so many are in flight."""


def test_channel_target_lists_ip_literals_under_their_scheme():
    assert channel_target("127.0.0.1:5001") == "127.0.0.1:5001"
    assert channel_target("summarizer.ns.svc:50051") == "summarizer.ns.svc:50051"
    assert channel_target("127.0.0.1:5001, 127.0.0.1:5002") == "ipv4:127.0.0.1:5001,127.0.0.1:5002"
    assert channel_target("[::1]:5001,[::1]:5002") == "ipv6:[::1]:5001,[::1]:5002"
    for uri in ("ipv4:10.0.0.1:1,10.0.0.2:1", "dns:///summarizer.ns.svc:50051", "unix:/run/s"):
        assert channel_target(uri) == uri


@pytest.mark.parametrize(
    ("addresses", "message"),
    [
        ("host-a:5001,host-b:5002", "must be IP literals"),
        ("127.0.0.1:5001,", "empty entry"),
        ("127.0.0.1,127.0.0.1:5002", "must be IP literals"),
        ("::1:5001,::1:5002", "must be IP literals"),
        ("127.0.0.1:5001,[::1]:5002", "mix IPv4 and IPv6"),
    ],
)
def test_channel_target_rejects_lists_grpc_cannot_resolve(addresses, message):
    with pytest.raises(ValueError, match=message):
        SummarizerClient(addresses)


def test_service_config_balances_over_healthy_replicas_with_bounded_retries():
    config = json.loads(retry_service_config(5))
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["healthCheckConfig"] == {"serviceName": SERVICE_NAME}
    assert config["methodConfig"][0]["retryPolicy"]["maxAttempts"] == 5
    assert config["retryThrottling"] == {"maxTokens": 100, "tokenRatio": 0.1}
    assert "retryThrottling" not in json.loads(retry_service_config(1))


def _ok_count(app) -> float:
    value = app.metrics.registry.get_sample_value(
        "pegasus_requests_total", {"method": "Summarize", "code": "OK"}
    )
    return value or 0.0


@pytest.mark.slow
def test_replica_that_is_not_serving_gets_no_calls(tiny_summarizer_dir):
    """A started but not loaded replica (health NOT_SERVING) is skipped, without retries."""
    from pegasus_gsg.server.app import ListenConfig, SummarizerServer
    from pegasus_gsg.server.settings import ServingConfig
    from pegasus_gsg.server.summarizer import SummarizerModel

    doc = fitting_docs(tiny_summarizer_dir, 1)[0]
    config = ServingConfig(max_input_tokens=128)
    loading = SummarizerServer(
        ListenConfig(port=0, metrics_port=0), lambda: SummarizerModel(tiny_summarizer_dir, config)
    )
    loading.start()
    try:
        with SummarizerClient(loading.address, max_attempts=1) as alone:
            assert alone.health() == "NOT_SERVING"  # asked on a channel that skips no one
            assert "backend unhealthy" in rpc_error(alone.summarize, doc).details()
        with running_server(tiny_summarizer_dir, metrics_port=0) as ready:
            target = f"127.0.0.1:{ready.port},127.0.0.1:{loading.port}"
            with SummarizerClient(target, max_attempts=1, timeout=60) as client:
                for _ in range(8):  # one try each: a call sent to `loading` would fail
                    assert client.summarize(doc, max_new_tokens=4).summary
                assert _ok_count(ready) == 8
                loading.load()  # SERVING: the channel's health watch adds it to the rotation
                wait_for(
                    lambda: client.summarize(doc, max_new_tokens=4) and _ok_count(loading) > 0,
                    "the loaded replica to get calls",
                )
    finally:
        loading.shutdown(grace=0)


@pytest.mark.slow
def test_cli_spreads_an_input_file_over_replicas(tiny_summarizer_dir, tmp_path, capsys):
    from pegasus_gsg import cli

    docs = fitting_docs(tiny_summarizer_dir, 12)
    source = tmp_path / "in.jsonl"
    source.write_text(
        "".join(json.dumps({"id": i, "document": d}) + "\n" for i, d in enumerate(docs))
    )
    with (
        running_server(tiny_summarizer_dir, metrics_port=0) as one,
        running_server(tiny_summarizer_dir, metrics_port=0) as two,
    ):
        servers = f"127.0.0.1:{one.port},127.0.0.1:{two.port}"
        argv = ["summarize", "--server", servers, "--input", str(source), "--max-new-tokens", "4"]
        assert cli.main([*argv, "--concurrency", "4"]) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [r["id"] for r in rows] == list(range(12))
        assert _ok_count(one) > 0 and _ok_count(two) > 0
        assert _ok_count(one) + _ok_count(two) == 12
    assert cli.main(["summarize", "--server", "host-a:1,host-b:2", "text"]) == 1
    assert "several addresses must be IP literals" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Replica:
    """`python -m pegasus_gsg.server` on fixed 127.0.0.1 ports, restartable on the same ports.

    (A shared server-process helper is moving to pegasus_gsg/serving/process.py; this one is
    the few lines this test needs.)
    """

    def __init__(self, model_dir: Path, log_dir: Path, name: str) -> None:
        self.model_dir, self.log_dir, self.name = model_dir, log_dir, name
        self.port, self.metrics_port = _free_port(), _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        log = self.log_dir / f"{self.name}-{self.starts}.log"
        with log.open("wb") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "pegasus_gsg.server", "--model", str(self.model_dir),
                    "--port", str(self.port), "--metrics-port", str(self.metrics_port),
                    "--max-input-tokens", "128", "--torch-threads", "1", "--grace", "1",
                ],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=out,
            )  # fmt: skip

    def ok_requests(self) -> float:
        """Its `pegasus_requests_total{method="Summarize",code="OK"}`; 0 when unreachable."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                text = reply.read().decode()
        except OSError:
            return 0.0
        pattern = r'^pegasus_requests_total\{code="OK",method="Summarize"\} (\S+)$'
        match = re.search(pattern, text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    def serving(self) -> bool:
        with grpc.insecure_channel(self.address) as channel:
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
            except grpc.RpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def _channel_attempts(target: str) -> tuple[int, int]:
    """(calls, attempts on the wire) of the channel to `target`, from channelz.

    Attempts count every call sent over a subchannel: first tries, retries, and one health
    Watch stream per connection.
    """
    top = json.loads(cygrpc.channelz_get_top_channels(0))
    # the client's call channel; its health channel, also to `target`, made no calls
    channel = max(
        (c for c in top["channel"] if c["data"]["target"].endswith(target)),
        key=lambda c: int(c["data"].get("callsStarted", 0)),
    )
    attempts = 0
    for ref in channel.get("subchannelRef", []):
        sub = json.loads(cygrpc.channelz_get_subchannel(int(ref["subchannelId"])))
        attempts += int(sub["subchannel"]["data"].get("callsStarted", 0))
    return int(channel["data"].get("callsStarted", 0)), attempts


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_load_survives_a_replica_killed_and_restarted(tiny_summarizer_dir, tmp_path):
    docs = fitting_docs(tiny_summarizer_dir, 12)
    a = Replica(tiny_summarizer_dir, tmp_path, "a")
    b = Replica(tiny_summarizer_dir, tmp_path, "b")
    lock = threading.Lock()
    sent, failures, stop, pause = [0], [], threading.Event(), [0.0]

    def worker(index: int) -> None:
        while not stop.is_set():
            with lock:
                if sent[0] >= MAX_REQUESTS:
                    return
                sent[0] += 1
                number = sent[0]
            try:
                client.summarize(docs[number % len(docs)], max_new_tokens=4)
            except grpc.RpcError as err:
                with lock:
                    failures.append(f"request {number}: {err.code().name}: {err.details()}")
            stop.wait(pause[0])

    try:
        a.start()
        b.start()
        wait_for(lambda: a.serving() and b.serving(), "both replicas to serve", tries=1200)
        target = f"{a.address},{b.address}"
        client = SummarizerClient(target, max_attempts=5, timeout=120)
        with client, ThreadPoolExecutor(CONCURRENCY) as pool:
            running = [pool.submit(worker, i) for i in range(CONCURRENCY)]
            wait_for(lambda: b.ok_requests() >= 20, "replica b to take load", tries=1200)
            b_before_kill = b.ok_requests()
            b.kill()  # mid-load: its in-flight calls fail with UNAVAILABLE and are retried
            sent_at_kill = sent[0]
            pause[0] = RECOVERY_PAUSE
            b.start()  # same port; health NOT_SERVING until the model has loaded
            wait_for(lambda: b.ok_requests() >= 10 or sent[0] >= MAX_REQUESTS, "b back", 1200)
            stop.set()
            for future in running:
                future.result()
            calls, attempts = _channel_attempts(client.target)
        a_total, b_after_restart = a.ok_requests(), b.ok_requests()
    finally:
        stop.set()
        a.stop()
        b.stop()
    print(
        f"\nsent {sent[0]} (b killed after {sent_at_kill}), failed {len(failures)}, "
        f"channel calls {calls}, attempts on the wire {attempts}, "
        f"so retries {attempts - calls - (a.starts + b.starts)} (one health watch per start), "
        f"served: a {a_total:.0f}, b {b_before_kill:.0f}+ before kill, "
        f"b {b_after_restart:.0f} after restart"
    )
    assert failures == [], failures[:5]
    assert b_after_restart >= 10, f"restarted replica served {b_after_restart} of {sent[0]}"
    assert a_total >= 20 and b_before_kill >= 20
    assert calls == sent[0]

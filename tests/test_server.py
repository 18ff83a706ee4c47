"""The gRPC server, started for real on 127.0.0.1:0 with a tiny random-weight PEGASUS model.

Every test calls through a real channel. Tests that need to hold the worker still (queue full,
drop while queued, batch failure, drain) use `GatedModel`, whose generate() waits on an event
the test sets: they wait for states, never for wall-clock time.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from pegasus_gsg.server.app import ListenConfig, SummarizerServer
from pegasus_gsg.server.batcher import Job
from pegasus_gsg.server.settings import ServingConfig
from pegasus_gsg.server.summarizer import SummarizerModel

from pegasus_gsg import cli
from pegasus_gsg.serving.client import SummarizerClient
from pegasus_gsg.serving.protos import SERVICE_NAME, pb2, pb2_grpc
from tests._server_helpers import (
    LIMITS,
    MAX_INPUT_TOKENS,
    GatedModel,
    fitting_docs,
    rpc_error,
    running_server,
    wait_for,
)
from tests.conftest import read_jsonl_slice


@pytest.fixture(scope="module")
def docs(tiny_summarizer_dir: Path) -> list[str]:
    return fitting_docs(tiny_summarizer_dir)


@pytest.fixture(scope="module")
def long_doc() -> str:
    return " ".join(read_jsonl_slice("reuters21578_en", 20, "text"))


@pytest.fixture(scope="module")
def server(tiny_summarizer_dir: Path) -> Iterator[SummarizerServer]:
    with running_server(
        tiny_summarizer_dir,
        serving=dict(max_batch_size=8, max_wait_ms=2),
        max_message_bytes=64 * 1024,
        metrics_port=0,
    ) as app:
        yield app


@pytest.fixture(scope="module")
def client(server: SummarizerServer) -> Iterator[SummarizerClient]:
    with SummarizerClient(server.address, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def reference(client: SummarizerClient, docs: list[str]) -> list[str]:
    """Unbatched greedy summaries: one call at a time, each alone in its generate() call."""
    replies = [client.summarize(d) for d in docs]
    assert all(r.batch_size == 1 for r in replies)
    return [r.summary for r in replies]


# -- the model layer --------------------------------------------------------------------------


def test_batched_greedy_equals_unbatched_and_depends_on_input(tiny_summarizer_dir, docs):
    model = SummarizerModel(tiny_summarizer_dir, ServingConfig(**LIMITS))
    options = model.resolve_options()
    jobs = [Job(model.prepare(d), options) for d in docs]
    single = [model.generate([job])[0] for job in jobs]
    # Right-padded batch of very different lengths, in an order unlike the sorted one.
    batched = model.generate(jobs[::-1])[::-1]
    assert batched == single
    assert len({summary for summary, _ in single}) >= len(docs) // 2, "model ignores its input"
    assert all(1 <= n <= options.max_new_tokens for _, n in single)


def test_serving_config_rejects_out_of_range_values():
    with pytest.raises(ValueError, match=r"max_batch_size must be 1..1024, got 0"):
        ServingConfig(max_batch_size=0)
    with pytest.raises(ValueError, match=r"max_wait_ms must be 0..10000, got -1"):
        ServingConfig(max_wait_ms=-1)


# -- summaries ----------------------------------------------------------------------------------


def test_single_batch_and_stream_agree(client, docs, reference):
    reply = client.summarize(docs[0])
    assert reply.summary == reference[0] and reply.summary.strip()
    assert reply.input_tokens > 1 and 1 <= reply.output_tokens <= 12
    assert not reply.truncated and reply.queue_seconds >= 0 and reply.generate_seconds > 0

    batch = client.summarize_batch(docs[:6])
    assert [r.summary for r in batch] == reference[:6]

    pieces_seen = 0
    for doc, expected in zip(docs[:4], reference[:4], strict=True):
        messages = list(client.summarize_stream(doc))
        assert messages[-1].done and not any(m.done for m in messages[:-1])
        assert "".join(m.text_delta for m in messages) == expected
        assert messages[-1].final.summary == expected
        pieces_seen = max(pieces_seen, sum(1 for m in messages if m.text_delta))
    assert pieces_seen > 1, "stream never sent the summary in more than one piece"


def test_beam_stream_sends_one_final_message(client, docs):
    unary = client.summarize(docs[1], num_beams=3, length_penalty=0.8)
    messages = list(client.summarize_stream(docs[1], num_beams=3, length_penalty=0.8))
    assert len(messages) == 1 and messages[0].done
    assert messages[0].text_delta == unary.summary == messages[0].final.summary


def test_options_change_the_output(client, docs, reference):
    short = client.summarize(docs[0], max_new_tokens=3)
    assert short.output_tokens <= 3
    long = client.summarize(docs[0], min_new_tokens=10, max_new_tokens=10)
    assert long.output_tokens == 10
    a = client.summarize(docs[0], do_sample=True, temperature=1.5, top_p=0.9, seed=7)
    b = client.summarize(docs[0], do_sample=True, temperature=1.5, top_p=0.9, seed=7)
    assert a.summary == b.summary, "the same seed must give the same sample"


def test_overlong_input_is_rejected_unless_truncation_is_asked(client, long_doc):
    err = rpc_error(client.summarize, long_doc)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"over the server's limit of {MAX_INPUT_TOKENS} input tokens" in err.details()
    reply = client.summarize(long_doc, truncate=True)
    assert reply.truncated and reply.input_tokens == MAX_INPUT_TOKENS and reply.summary


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(text=""), "text is empty"),
        (dict(text=" \n\t "), "text is empty"),
        (dict(max_new_tokens=0), "options.max_new_tokens must be in 1..64, got 0"),
        (dict(max_new_tokens=65), "options.max_new_tokens must be in 1..64, got 65"),
        (dict(num_beams=0), "options.num_beams must be in 1..4, got 0"),
        (dict(num_beams=5), "options.num_beams must be in 1..4, got 5"),
        (
            dict(max_new_tokens=5, min_new_tokens=6),
            "options.min_new_tokens must be in 0..max_new_tokens (5), got 6",
        ),
        (dict(do_sample=True, temperature=0.0), "options.temperature must be > 0, got 0.0"),
        (dict(do_sample=True, top_p=1.5), "options.top_p must be in (0, 1], got 1.5"),
        (dict(do_sample=True, num_beams=2), "options.do_sample needs options.num_beams == 1"),
    ],
)
def test_bad_input_gets_invalid_argument_with_a_precise_message(client, docs, kwargs, message):
    text = kwargs.pop("text", docs[0])
    for call in (client.summarize, client.summarize_stream):
        err = rpc_error(call, text, **kwargs)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in err.details()


def test_batch_errors_name_the_item(client, docs):
    err = rpc_error(client.summarize_batch, [])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "texts is empty" in err.details()
    err = rpc_error(client.summarize_batch, [docs[0], "  "])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "texts[1]: text is empty"


def test_message_over_the_size_limit_is_refused(client):
    err = rpc_error(client.summarize, "word " * 20_000)  # 100 kB > 64 KiB limit
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_tiny_deadline_then_the_server_keeps_serving(client, docs, reference):
    err = rpc_error(client.summarize, docs[2], timeout=0.001)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert client.summarize(docs[2]).summary == reference[2]


# -- batching -----------------------------------------------------------------------------------


def test_concurrent_requests_share_a_batch_with_unbatched_outputs(
    tiny_summarizer_dir, docs, reference
):
    # max_wait_ms is huge, so the batch closes when 4 requests are in: no timing involved.
    serving = dict(max_batch_size=4, max_wait_ms=10_000)
    with running_server(tiny_summarizer_dir, serving=serving) as app:
        stub = pb2_grpc.SummarizerStub(grpc.insecure_channel(app.address))
        calls = [stub.Summarize.future(pb2.SummarizeRequest(text=d), timeout=60) for d in docs[:4]]
        replies = [c.result() for c in calls]
        assert [r.batch_size for r in replies] == [4, 4, 4, 4]
        assert [r.summary for r in replies] == reference[:4]
        info = stub.GetModelInfo(pb2.GetModelInfoRequest())
        assert info.stats.max_batch_size_seen == 4 and info.stats.batches == 1
        assert info.stats.requests_completed == 4


def test_a_failing_request_does_not_fail_its_batch_mates(tiny_summarizer_dir, docs, reference):
    serving = dict(max_batch_size=3, max_wait_ms=10_000)
    with running_server(tiny_summarizer_dir, GatedModel, serving=serving) as app:
        stub = pb2_grpc.SummarizerStub(grpc.insecure_channel(app.address))
        texts = [docs[0], "POISON " + docs[1], docs[2]]
        calls = [stub.Summarize.future(pb2.SummarizeRequest(text=t), timeout=60) for t in texts]
        assert calls[1].exception().code() == grpc.StatusCode.INTERNAL
        assert "poisoned batch of 1" in calls[1].exception().details()
        assert calls[0].result().summary == reference[0]
        assert calls[2].result().summary == reference[2]
        assert stub.Summarize(pb2.SummarizeRequest(text=docs[3]), timeout=60).summary
        stats = stub.GetModelInfo(pb2.GetModelInfoRequest()).stats
        assert stats.requests_failed == 1 and stats.requests_completed == 3


def test_full_queue_answers_resource_exhausted(tiny_summarizer_dir, docs):
    serving = dict(max_batch_size=1, max_wait_ms=0, max_queue=1)
    with running_server(tiny_summarizer_dir, GatedModel, serving=serving) as app:
        model = app.service.model
        model.gate.clear()
        stub = pb2_grpc.SummarizerStub(grpc.insecure_channel(app.address))
        info = pb2.GetModelInfoRequest()
        first = stub.Summarize.future(pb2.SummarizeRequest(text=docs[0]), timeout=120)
        assert model.entered.wait(60)  # the worker holds `first`; the queue is empty
        second = stub.Summarize.future(pb2.SummarizeRequest(text=docs[1]), timeout=120)
        wait_for(lambda: stub.GetModelInfo(info).stats.queue_depth == 1, "a queued request")
        err = rpc_error(stub.Summarize, pb2.SummarizeRequest(text=docs[2]), timeout=60)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "request queue is full (1 waiting)" in err.details()
        model.gate.set()
        assert first.result().summary and second.result().summary


def test_request_whose_deadline_passes_in_the_queue_is_never_computed(tiny_summarizer_dir, docs):
    serving = dict(max_batch_size=1, max_wait_ms=0)
    with running_server(tiny_summarizer_dir, GatedModel, serving=serving) as app:
        model = app.service.model
        model.gate.clear()
        stub = pb2_grpc.SummarizerStub(grpc.insecure_channel(app.address))
        first = stub.Summarize.future(pb2.SummarizeRequest(text=docs[0]), timeout=120)
        assert model.entered.wait(60)
        late = stub.Summarize.future(pb2.SummarizeRequest(text="LATE " + docs[1]), timeout=0.5)
        assert late.exception().code() == grpc.StatusCode.DEADLINE_EXCEEDED
        model.gate.set()
        assert first.result().summary
        info = pb2.GetModelInfoRequest()
        wait_for(lambda: stub.GetModelInfo(info).stats.requests_dropped == 1, "the drop")
        assert not any("LATE" in t for t in model.computed)


# -- lifecycle, health, reflection, metrics -------------------------------------------------------


def test_health_is_not_serving_until_the_model_is_loaded(tiny_summarizer_dir, docs):
    app = SummarizerServer(
        ListenConfig(port=0), lambda: SummarizerModel(tiny_summarizer_dir, ServingConfig(**LIMITS))
    )
    app.start()
    try:
        # skip_unhealthy=False: a client that calls anyway gets the server's own answer
        with SummarizerClient(app.address, max_attempts=1, skip_unhealthy=False) as c:
            assert c.health() == "NOT_SERVING"
            assert c.health(SERVICE_NAME) == "NOT_SERVING"
            err = rpc_error(c.summarize, docs[0])
            assert err.code() == grpc.StatusCode.UNAVAILABLE
            assert "model is still loading" in err.details()
            app.load()
            assert c.health() == "SERVING" and c.health(SERVICE_NAME) == "SERVING"
            assert c.summarize(docs[0]).summary
    finally:
        app.shutdown(grace=1)


def test_shutdown_lets_in_flight_requests_finish(tiny_summarizer_dir, docs, reference):
    serving = dict(max_batch_size=1, max_wait_ms=0)
    with running_server(tiny_summarizer_dir, GatedModel, serving=serving) as app:
        model = app.service.model
        model.gate.clear()
        channel = grpc.insecure_channel(app.address)
        stub = pb2_grpc.SummarizerStub(channel)
        in_flight = stub.Summarize.future(pb2.SummarizeRequest(text=docs[0]), timeout=120)
        assert model.entered.wait(60)
        stopper = threading.Thread(target=app.shutdown, kwargs=dict(grace=60))
        stopper.start()
        # Stopping refuses new RPCs at once, while the in-flight one is still held.
        wait_for(lambda: _refused(stub, docs[1]), "new RPCs to be refused")
        assert not in_flight.done()
        model.gate.set()
        assert in_flight.result().summary == reference[0]
        stopper.join(60)
        assert not stopper.is_alive()


def _refused(stub, text: str) -> bool:
    try:
        stub.Summarize(pb2.SummarizeRequest(text=text), timeout=5)
    except grpc.RpcError as err:
        return err.code() == grpc.StatusCode.UNAVAILABLE
    return False


def test_reflection_lists_the_services(server):
    with grpc.insecure_channel(server.address) as channel:
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
        assert SERVICE_NAME in services and "grpc.health.v1.Health" in services
        method = ProtoReflectionDescriptorDatabase(channel).FindFileContainingSymbol(SERVICE_NAME)
        assert method.package == "pegasus.summarizer.v1"


def test_model_info_reports_limits_and_defaults(client, tiny_summarizer_dir):
    info = client.model_info()
    assert info.model_path == str(tiny_summarizer_dir)
    assert info.max_input_tokens == MAX_INPUT_TOKENS and info.max_new_tokens_limit == 64
    assert info.defaults.max_new_tokens == 12  # from the model's generation config
    assert info.defaults.num_beams == 1 and info.max_batch_size == 8


def test_prometheus_metrics(server, client, docs):
    client.summarize(docs[0])
    rpc_error(client.summarize, "")
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics") as response:
        text = response.read()
    lines = text.decode().splitlines()

    def value(prefix: str) -> float:
        return float(next(line for line in lines if line.startswith(prefix)).split()[-1])

    assert value('pegasus_requests_total{code="OK",method="Summarize"}') >= 1
    assert value('pegasus_requests_total{code="INVALID_ARGUMENT",method="Summarize"}') >= 1
    assert value('pegasus_request_seconds_count{method="Summarize"}') >= 2
    assert value("pegasus_batch_size_count") >= 1
    assert value("pegasus_queue_depth") == 0


# -- the CLI against the real server ------------------------------------------------------------


def test_cli_summarizes_a_jsonl_file_and_reports_bad_records(
    server, docs, reference, tmp_path, capsys
):
    records = [{"id": f"r{i}", "document": d} for i, d in enumerate(docs[:3])]
    records.insert(2, {"id": "empty", "document": ""})
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out.jsonl"
    argv = ["summarize", "--server", server.address, "--input", str(source), "--output", str(out)]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert f"{source}:3: INVALID_ARGUMENT: text is empty" in err
    assert "1 of 4 records failed" in err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["r0", "r1", "r2"]
    assert [r["line"] for r in rows] == [1, 2, 4]
    assert [r["summary"] for r in rows] == reference[:3]

    assert cli.main(["summarize", "--server", server.address, "--stream", docs[0]]) == 0
    assert capsys.readouterr().out == reference[0] + "\n"

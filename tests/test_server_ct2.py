"""The gRPC server on the CTranslate2 backend, started for real on 127.0.0.1:0.

Same tiny random-weight model as tests/test_server.py; the transformers server's answers are
the reference the CTranslate2 server must reproduce through every RPC.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from pegasus_gsg.server.app import SummarizerServer

from pegasus_gsg.serving.client import SummarizerClient
from pegasus_gsg.serving.process import ServerProcess
from pegasus_gsg.serving.protos import pb2
from tests._server_helpers import fitting_docs, rpc_error, running_server

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("ctranslate2")

CT2 = dict(backend="ctranslate2", max_batch_size=8, max_wait_ms=2)


@pytest.fixture(scope="module")
def docs(tiny_summarizer_dir: Path) -> list[str]:
    return fitting_docs(tiny_summarizer_dir)


@pytest.fixture(scope="module")
def ct2_server(tiny_summarizer_dir: Path, tmp_path_factory) -> Iterator[SummarizerServer]:
    cache = tmp_path_factory.mktemp("ct2_cache")
    with running_server(tiny_summarizer_dir, serving={**CT2, "ct2_cache_dir": cache}) as app:
        yield app


@pytest.fixture(scope="module")
def client(ct2_server: SummarizerServer) -> Iterator[SummarizerClient]:
    with SummarizerClient(ct2_server.address, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def hf_answers(tiny_summarizer_dir: Path, docs: list[str]) -> dict[str, list[str]]:
    """The transformers server's greedy and beam-3 summaries, one request at a time."""
    with running_server(tiny_summarizer_dir) as app, SummarizerClient(app.address) as c:
        return {
            "greedy": [c.summarize(d).summary for d in docs],
            "beam": [c.summarize(d, num_beams=3).summary for d in docs],
        }


def test_model_info_reports_backend_and_compute_type(client):
    info = client.model_info()
    assert (info.backend, info.compute_type) == ("ctranslate2", "float32")


def test_summaries_equal_the_transformers_server(client, docs, hf_answers):
    assert [client.summarize(d).summary for d in docs] == hf_answers["greedy"]
    batch = client.summarize_batch(docs)
    assert [r.summary for r in batch] == hf_answers["greedy"]
    assert max(r.batch_size for r in batch) > 1
    assert [client.summarize(d, num_beams=3).summary for d in docs] == hf_answers["beam"]


def test_stream_concatenates_to_the_unary_summary(ct2_server, client, docs):
    # The same engine's unary answer (agreement with transformers is the greedy test's job: on
    # a random-weight model a near-tie logit may flip between the engines on some tokenizers).
    with grpc.insecure_channel(ct2_server.address) as channel:
        from pegasus_gsg.serving.protos import pb2_grpc

        call = pb2_grpc.SummarizerStub(channel).SummarizeStream
        for doc in docs[:4]:
            expected = client.summarize(doc).summary
            messages = list(call(pb2.SummarizeRequest(text=doc), timeout=60))
            assert messages[-1].done and all(not m.done for m in messages[:-1])
            assert "".join(m.text_delta for m in messages) == expected == messages[-1].final.summary


def test_seeded_sampling_repeats_and_min_length_holds(client, docs):
    first = client.summarize(docs[0], do_sample=True, seed=11, max_new_tokens=12)
    again = client.summarize(docs[0], do_sample=True, seed=11, max_new_tokens=12)
    assert first.summary == again.summary
    reply = client.summarize(docs[0], min_new_tokens=10, max_new_tokens=10)
    assert reply.output_tokens == 10


def test_deadline_and_overlong_policy(ct2_server, client, docs):
    with grpc.insecure_channel(ct2_server.address) as channel:
        from pegasus_gsg.serving.protos import pb2_grpc

        stub = pb2_grpc.SummarizerStub(channel)
        err = rpc_error(stub.Summarize, pb2.SummarizeRequest(text=docs[0]), timeout=0.001)
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        long = " ".join(docs * 20)
        err = rpc_error(stub.Summarize, pb2.SummarizeRequest(text=long), timeout=60)
        assert (
            err.code() == grpc.StatusCode.INVALID_ARGUMENT
            and "over the server's limit" in err.details()
        )
        reply = stub.Summarize(
            pb2.SummarizeRequest(text=long, overlong=pb2.OVERLONG_POLICY_TRUNCATE), timeout=60
        )
        assert reply.truncated
    assert client.summarize(docs[1]).summary  # still serving


def failed_start(*args: str) -> tuple[int, str]:
    """(exit status, log) of a server that must exit before it is SERVING."""
    server = ServerProcess(["--port", "0", *args])
    with server, pytest.raises(RuntimeError, match="before it was SERVING"):
        server.wait_until_serving(timeout=300)
    assert server.returncode is not None
    return server.returncode, server.log_text


def test_unsupported_compute_type_is_refused_listing_the_supported(tiny_summarizer_dir):
    code, log = failed_start("--model", str(tiny_summarizer_dir), "--backend", "ctranslate2",
                             "--compute-type", "float16")  # fmt: skip
    assert code == 2
    assert "'float16' is not supported on cpu" in log and "int8" in log
    assert "listening on" not in log  # refused before binding


def test_int8_is_refused_before_binding_where_it_saturates(
    tiny_summarizer_dir, tmp_path, int8_saturating_env
):
    """oneDNN capped below VNNI, as on an AVX2-only AMD CPU: int8 is refused in one line
    naming float32, before converting the model and before binding the port."""
    import shutil

    forced = int8_saturating_env
    model = Path(shutil.copytree(tiny_summarizer_dir, tmp_path / "m"))
    proc = subprocess.run(
        [sys.executable, "-m", "pegasus_gsg.server", "--port", "0", "--model", str(model),
         "--backend", "ctranslate2", "--compute-type", "int8"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, **forced},
    )  # fmt: skip
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("python -m pegasus_gsg.server: error: int8 is inaccurate here: ")
    )
    assert "no VNNI" in proc.stderr and "--compute-type float32" in proc.stderr
    assert "listening on" not in proc.stderr and not (model / ".ct2").exists()


def test_unconvertible_model_fails_naming_what_is_missing(tiny_summarizer_dir, tmp_path):

    broken = Path(shutil.copytree(tiny_summarizer_dir, tmp_path / "m"))
    (broken / "model.safetensors").unlink()
    code, log = failed_start("--model", str(broken), "--backend", "ctranslate2")
    assert code == 1
    assert "has no weights: expected one of model.safetensors" in log
    assert "serving " not in log  # never reported SERVING

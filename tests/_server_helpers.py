"""Helpers shared by the server tests: start a real server in-process, hold its worker still."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from pegasus_gsg.server.app import ListenConfig, SummarizerServer
from pegasus_gsg.server.batcher import Job
from pegasus_gsg.server.settings import ServingConfig
from pegasus_gsg.server.summarizer import SummarizerModel

from tests.conftest import read_jsonl_slice

MAX_INPUT_TOKENS = 128
LIMITS = dict(max_input_tokens=MAX_INPUT_TOKENS, max_new_tokens_limit=64, max_num_beams=4)


def fitting_docs(model_dir: Path, count: int = 12) -> list[str]:
    """Real email bodies (aeslc) shorter than the test server's input limit."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = read_jsonl_slice("aeslc", 200, "document")
    fitting = [t for t in texts if t.strip() and len(tokenizer(t)["input_ids"]) < MAX_INPUT_TOKENS]
    assert len(fitting) >= count
    return fitting[:count]


@contextmanager
def running_server(
    model_dir: Path, model_cls=SummarizerModel, serving: dict | None = None, **listen
) -> Iterator[SummarizerServer]:
    """A started, loaded server on 127.0.0.1:<free port>; shut down on exit."""
    config = ServingConfig(**{**LIMITS, **(serving or {})})
    app = SummarizerServer(ListenConfig(port=0, **listen), lambda: model_cls(model_dir, config))
    app.start()
    app.load()
    try:
        yield app
    finally:
        app.shutdown(grace=1)


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:
    """The RpcError a unary or streaming call raises (a stream is read to its end)."""
    with pytest.raises(grpc.RpcError) as info:
        result = call(*args, **kwargs)
        if isinstance(result, Iterator):
            list(result)
    return info.value


def wait_for(predicate, what: str, tries: int = 600) -> None:
    """Poll for a state (not a duration); each try waits at most 0.1 s."""
    event = threading.Event()
    for _ in range(tries):
        if predicate():
            return
        event.wait(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class GatedModel(SummarizerModel):
    """generate() waits for `gate`, records what it computes, and fails on texts with POISON."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.computed: list[str] = []

    def generate(self, jobs: list[Job]):
        decode = self._decoder.decode
        texts = [decode(j.prepared.input_ids, skip_special_tokens=True) for j in jobs]
        self.computed.extend(texts)
        self.entered.set()
        assert self.gate.wait(120)
        if any("POISON" in t for t in texts):
            raise RuntimeError(f"poisoned batch of {len(jobs)}")
        return super().generate(jobs)

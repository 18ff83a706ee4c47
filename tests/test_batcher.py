"""The batching worker's grouping, with a stand-in model that records the batches it is given.

The first request holds the worker (each call of the stand-in waits for a permit the test
hands out) while the others queue up behind it, so which requests share a batch depends only
on the batcher's rules, not on timing.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest
from pegasus_gsg.server.batcher import Batcher, DroppedError, Job, Prepared, SummaryResult
from pegasus_gsg.server.settings import ServingConfig

from pegasus_gsg.evaluation.generation import GenerationOptions

OPTIONS = GenerationOptions(max_new_tokens=4)


class RecordingModel:
    """Records each batch as its input lengths; each call waits for one permit to finish."""

    def __init__(self, config: ServingConfig) -> None:
        self.config = config
        self.batches: list[list[int]] = []
        self.started = threading.Semaphore(0)
        """Released when a call begins."""
        self.permits = threading.Semaphore(0)
        """One per call allowed to return."""

    def generate(self, jobs: list[Job]) -> list[tuple[str, int]]:
        self.batches.append([len(job.prepared.input_ids) for job in jobs])
        self.started.release()
        assert self.permits.acquire(timeout=60)
        return [("summary", 1) for _ in jobs]


def job(length: int, deadline: float | None = None) -> Job:
    return Job(Prepared(input_ids=[5] * length, truncated=False), OPTIONS, deadline=deadline)


def busy_batcher(**settings: int) -> tuple[RecordingModel, Batcher, Future[SummaryResult]]:
    """A batcher whose worker is inside its first call (a length-100 job), so that what is
    submitted next queues up."""
    model = RecordingModel(ServingConfig(max_wait_ms=0, **settings))
    batcher = Batcher(model)
    first = batcher.submit(job(100))
    assert model.started.acquire(timeout=60)
    return model, batcher, first


def batches_after_queueing(lengths: list[int], **settings: int) -> list[list[int]]:
    """The batches formed when `lengths` arrive in this order while the worker is busy."""
    model, batcher, first = busy_batcher(**settings)
    try:
        futures = [batcher.submit(job(n)) for n in lengths]
        for _ in range(1 + len(lengths)):
            model.permits.release()
        assert first.result(60).batch_size == 1
        assert all(f.result(60).summary == "summary" for f in futures)
    finally:
        batcher.close(60)
    return model.batches[1:]


LENGTHS = [90, 10, 80, 20, 70, 30, 60, 40]


@pytest.mark.parametrize("window", [0, 2])
def test_without_a_window_each_batch_sorts_only_its_own_arrivals(window):
    # Queued pairs in arrival order, each sorted: every batch pads a short input to a long one.
    assert batches_after_queueing(LENGTHS, max_batch_size=2, length_window=window) == [
        [10, 90],
        [20, 80],
        [30, 70],
        [40, 60],
    ]


@pytest.mark.parametrize("window", [8, 100])
def test_length_window_groups_similar_lengths_across_queued_requests(window):
    # The worker takes all 8 queued jobs at once and cuts them sorted, shortest batch first.
    assert batches_after_queueing(LENGTHS, max_batch_size=2, length_window=window) == [
        [10, 20],
        [30, 40],
        [60, 70],
        [80, 90],
    ]


def test_length_window_takes_only_what_is_queued_and_keeps_the_token_budget():
    # A window of 4: two rounds of four; the padded-token budget (2 x 60) still splits a round.
    assert batches_after_queueing(
        LENGTHS, max_batch_size=2, length_window=4, max_batch_tokens=120
    ) == [[10, 20], [80], [90], [30, 40], [60], [70]]


def test_length_window_is_checked():
    with pytest.raises(ValueError, match=r"length_window must be 0..65536, got -1"):
        ServingConfig(length_window=-1)
    with pytest.raises(ValueError, match=r"inter_threads 2 needs backend ctranslate2"):
        ServingConfig(inter_threads=2)
    assert ServingConfig(backend="ctranslate2", threads=4, inter_threads=2).intra_threads() == 2
    assert ServingConfig(backend="ctranslate2", threads=1, inter_threads=2).intra_threads() == 1


def test_queue_depth_counts_requests_waiting_in_a_taken_window():
    model, batcher, first = busy_batcher(max_batch_size=2, length_window=8)
    try:
        futures = [batcher.submit(job(n)) for n in LENGTHS]
        assert batcher.queue_depth() == 8
        model.permits.release()  # the worker takes all 8 at once and starts on [10, 20]
        assert model.started.acquire(timeout=60)
        assert model.batches[-1] == [10, 20]
        assert batcher.queue_depth() == 6, "the window's later batches still wait"
        for _ in range(4):
            model.permits.release()
        assert all(f.result(60).summary for f in futures)
        assert batcher.queue_depth() == 0
    finally:
        batcher.close(60)
    assert first.result(60).batch_size == 1


def test_a_deadline_that_passes_inside_a_window_drops_the_request_uncomputed():
    model, batcher, first = busy_batcher(max_batch_size=1, length_window=8)
    try:
        deadline = time.monotonic() + 1.0
        early = [batcher.submit(job(10)), batcher.submit(job(20))]
        late = batcher.submit(job(30, deadline=deadline))
        model.permits.release()  # the worker takes all three, runs [10] first
        assert model.started.acquire(timeout=60)
        while time.monotonic() <= deadline:  # the third one's deadline passes meanwhile
            time.sleep(0.01)
        for _ in range(3):
            model.permits.release()
        assert [f.result(60).batch_size for f in early] == [1, 1]
        with pytest.raises(DroppedError):
            late.result(60)
    finally:
        batcher.close(60)
    assert first.result(60).summary
    assert model.batches == [[100], [10], [20]]
    assert batcher.stats().requests_dropped == 1

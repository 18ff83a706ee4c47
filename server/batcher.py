"""Group concurrent requests into batches for one worker thread that owns the model.

Request path: a gRPC handler thread validates the text and options (server/summarizer.py), then
`Batcher.submit` puts a `Job` on a bounded queue and the handler waits on the job's future. One
worker thread owns the model:

1. it blocks for the first job, then keeps collecting until `max_wait_ms` have passed or
   `max_batch_size` jobs are in hand (jobs already queued are taken at once); so a request
   waits at most the batch in progress plus `max_wait_ms` before its own batch starts. With a
   full batch in hand it also takes jobs already queued, up to `length_window` in all, without
   waiting: a larger pool to sort in step 3 when requests queue up faster than batches finish;
2. jobs whose deadline passed or that were cancelled while queued are dropped, never computed;
3. the rest are grouped by generation options (only identical options share a `generate` call;
   seeded sampling and streams run alone), each group is sorted by input length and cut into
   batches of at most `max_batch_size` requests and `max_batch_tokens` padded input tokens, so
   requests of similar length share a batch and little compute goes to padding (the batches of
   one window run shortest first);
4. each batch goes to the model's `generate` (server/backends.py pads it on the right, which
   leaves batched greedy output equal to unbatched output);
5. if a batched `generate` raises, each member is retried alone, so one bad request fails only
   itself and the worker never dies.

Why batching pays on CPU: a decoder step for 16 sequences costs little more than for one (the
matrix products get wider, the per-step Python and kernel-launch overhead is shared), so at
concurrency 16 a batched server answers several times more requests per second than one that
calls `generate` once per request (benchmarks/bench_server.py measures it).

No torch, transformers or grpc here: the batcher sees the model only through `BatchModel`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from pegasus_gsg.evaluation.generation import GenerationOptions

from .settings import ServingConfig

if TYPE_CHECKING:
    from transformers import TextIteratorStreamer

logger = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    """The request queue holds `max_queue` jobs already (gRPC: RESOURCE_EXHAUSTED)."""


class DroppedError(RuntimeError):
    """The job's deadline passed, or it was cancelled, before the worker reached it."""


class ShuttingDownError(RuntimeError):
    """The batcher is closed and takes no new work (gRPC: UNAVAILABLE)."""


@dataclass(frozen=True)
class Prepared:
    """A validated, tokenized input."""

    input_ids: list[int]
    truncated: bool


@dataclass
class SummaryResult:
    """What one request gets back."""

    summary: str
    input_tokens: int
    output_tokens: int
    truncated: bool
    queue_seconds: float
    generate_seconds: float
    batch_size: int


@dataclass(eq=False)
class Job:
    """One request on its way through the batcher."""

    prepared: Prepared
    options: GenerationOptions
    deadline: float | None = None
    """time.monotonic() after which the result is useless; None = no deadline."""
    streamer: TextIteratorStreamer | None = None
    future: Future[SummaryResult] = field(default_factory=Future)
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued_at: float = field(default_factory=time.monotonic)

    def cancel(self) -> None:
        """Called when the RPC ends early (client cancel or deadline)."""
        self.cancelled.set()
        self.future.cancel()

    def abandoned(self, now: float | None = None) -> bool:
        """True when nobody will read the result any more."""
        if self.cancelled.is_set():
            return True
        return self.deadline is not None and (now or time.monotonic()) >= self.deadline

    @property
    def runs_alone(self) -> bool:
        # A streamer serves one sequence; a seeded sample must not depend on batch-mates.
        return self.streamer is not None or (
            self.options.do_sample and self.options.seed is not None
        )

    def batch_key(self) -> object:
        return ("alone", id(self)) if self.runs_alone else self.options


class BatchModel(Protocol):
    """What the batcher needs of a model (server/summarizer.py's `SummarizerModel`)."""

    config: ServingConfig

    def generate(self, jobs: list[Job]) -> list[tuple[str, int]]:
        """(summary, generated-token count) per job, for jobs sharing one options value."""
        ...


@dataclass
class BatchingStats:
    """Counters since start; read through `Batcher.stats()`."""

    requests_completed: int = 0
    requests_failed: int = 0
    requests_dropped: int = 0
    batches: int = 0
    batched_requests: int = 0
    max_batch_size_seen: int = 0

    @property
    def mean_batch_size(self) -> float:
        return self.batched_requests / self.batches if self.batches else 0.0


class Batcher:
    """The one worker thread that owns the model; see the module docstring for the algorithm."""

    def __init__(self, model: BatchModel, on_batch: Callable[[int], None] | None = None) -> None:
        self.model = model
        self.config = model.config
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=self.config.max_queue)
        self._stats = BatchingStats()
        self._stats_lock = threading.Lock()
        self._on_batch = on_batch
        self._closed = False
        self._window_waiting = 0
        self._thread = threading.Thread(target=self._run, name="batching-worker", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Future[SummaryResult]:
        """Queue a job; its future resolves to a `SummaryResult` or an exception.

        Raises:
            QueueFullError: `max_queue` jobs are already waiting.
            ShuttingDownError: `close` has been called.
        """
        if self._closed:
            raise ShuttingDownError("server is shutting down")
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFullError(
                f"request queue is full ({self.config.max_queue} waiting); retry later"
            ) from None
        return job.future

    def queue_depth(self) -> int:
        """Requests waiting for the worker: queued, or taken into a window but not yet run."""
        return self._queue.qsize() + self._window_waiting

    def stats(self) -> BatchingStats:
        with self._stats_lock:
            return replace(self._stats)

    def close(self, timeout: float | None = None) -> None:
        """Finish the queued jobs, then stop the worker."""
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout)

    # -- worker thread ------------------------------------------------------------------------

    def _collect(self, first: Job) -> tuple[list[Job], bool]:
        """The first job plus what arrives within max_wait_ms, up to max_batch_size jobs."""
        window = [first]
        # Measured from now, not from the first job's arrival: under load the first job has
        # waited through the previous batch, and the clients that batch just answered are
        # about to send again; a window that starts now lets them join instead of splitting
        # the load into two half-size batches that alternate.
        wait_until = time.monotonic() + self.config.max_wait_ms / 1000
        while len(window) < self.config.max_batch_size:
            timeout = wait_until - time.monotonic()
            try:
                job = self._queue.get_nowait() if timeout <= 0 else self._queue.get(timeout=timeout)
            except queue.Empty:
                break
            if job is None:
                return window, True
            window.append(job)
        # A full batch and more already queued: take up to length_window jobs (no waiting), so
        # that sorting by length puts similar lengths together across several batches.
        while len(window) < self.config.length_window:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return window, True
            window.append(job)
        return window, False

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            window, stop = self._collect(first)
            try:
                self._process(window)
            except Exception as err:  # never let the worker die
                logger.exception("batching worker error")
                for job in window:
                    if not job.future.done():
                        self._finish_failed(job, err)

    def _process(self, window: list[Job]) -> None:
        live: list[Job] = []
        cancelled: list[Job] = []
        for job in window:
            (live if job.future.set_running_or_notify_cancel() else cancelled).append(job)
        self._drop(cancelled)
        groups: dict[object, list[Job]] = {}
        for job in live:
            groups.setdefault(job.batch_key(), []).append(job)
        batches = [
            batch
            for group in groups.values()
            for batch in self._split(sorted(group, key=lambda j: len(j.prepared.input_ids)))
        ]
        self._window_waiting = len(live)
        try:
            self._run_batches(batches)
        finally:
            self._window_waiting = 0

    def _run_batches(self, batches: list[list[Job]]) -> None:
        for batch in batches:
            # Checked per batch: a large window's last batches start well after it was taken.
            now = time.monotonic()
            abandoned = [job.abandoned(now) for job in batch]
            self._drop(job for job, gone in zip(batch, abandoned, strict=True) if gone)
            self._window_waiting -= len(batch)
            run = [job for job, gone in zip(batch, abandoned, strict=True) if not gone]
            if run:
                self._run_batch(run)

    def _drop(self, jobs: Iterable[Job]) -> None:
        """Fail jobs nobody waits for any more (deadline passed or cancelled) uncomputed."""
        for job in jobs:
            if job.streamer is not None:
                job.streamer.end()
            if not job.future.done():
                job.future.set_exception(DroppedError("deadline passed while queued"))
            self._count(dropped=1)

    def _split(self, jobs: list[Job]) -> list[list[Job]]:
        """Cut length-sorted jobs into batches within the size and padded-token budgets."""
        batches: list[list[Job]] = []
        current: list[Job] = []
        for job in jobs:
            length = len(job.prepared.input_ids)  # the longest so far: jobs are sorted
            if current and (
                len(current) >= self.config.max_batch_size
                or (len(current) + 1) * length > self.config.max_batch_tokens
            ):
                batches.append(current)
                current = []
            current.append(job)
        if current:
            batches.append(current)
        return batches

    def _run_batch(self, batch: list[Job]) -> None:
        started = time.monotonic()
        try:
            outputs = self.model.generate(batch)
        except Exception as err:
            if len(batch) == 1:
                logger.warning("generation failed for one request: %s", err)
                self._finish_failed(batch[0], err)
                return
            logger.warning("batch of %d failed (%s); retrying each request alone", len(batch), err)
            for job in batch:
                self._run_batch([job])
            return
        elapsed = time.monotonic() - started
        with self._stats_lock:
            self._stats.batches += 1
            self._stats.batched_requests += len(batch)
            self._stats.requests_completed += len(batch)
            self._stats.max_batch_size_seen = max(self._stats.max_batch_size_seen, len(batch))
        if self._on_batch is not None:
            self._on_batch(len(batch))
        for job, (summary, n_out) in zip(batch, outputs, strict=True):
            job.future.set_result(
                SummaryResult(
                    summary=summary,
                    input_tokens=len(job.prepared.input_ids),
                    output_tokens=n_out,
                    truncated=job.prepared.truncated,
                    queue_seconds=started - job.enqueued_at,
                    generate_seconds=elapsed,
                    batch_size=len(batch),
                )
            )

    def _finish_failed(self, job: Job, err: Exception) -> None:
        if job.streamer is not None:
            job.streamer.end()  # unblock the stream reader
        if not job.future.done():
            job.future.set_exception(err)
        self._count(failed=1)

    def _count(self, failed: int = 0, dropped: int = 0) -> None:
        with self._stats_lock:
            self._stats.requests_failed += failed
            self._stats.requests_dropped += dropped

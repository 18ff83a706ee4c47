"""Load a summarizer and serve concurrent requests through one batching worker (no grpc here).

Request path: a gRPC handler thread validates the text and options (`SummarizerModel.prepare`,
`resolve_options`), then `Batcher.submit` puts a `Job` on a bounded queue and the handler waits
on the job's future. One worker thread owns the model:

1. it blocks for the first job, then keeps collecting until `max_wait_ms` have passed or
   `max_batch_size` jobs are in hand (jobs already queued are taken at once); so a request
   waits at most the batch in progress plus `max_wait_ms` before its own batch starts;
2. jobs whose deadline passed or that were cancelled while queued are dropped, never computed;
3. the rest are grouped by generation options (only identical options share a `generate` call;
   seeded sampling and streams run alone), each group is sorted by input length and cut into
   batches of at most `max_batch_size` requests and `max_batch_tokens` padded input tokens, so
   requests of similar length share a batch and little compute goes to padding;
4. each batch is right-padded with an attention mask (encoder-decoder: padding the encoder input
   on the right leaves every real position's encoding unchanged, so batched greedy output equals
   unbatched output; tests/test_server.py checks it), generated and decoded;
5. if a batched `generate` raises, each member is retried alone, so one bad request fails only
   itself and the worker never dies.

Why batching pays on CPU: a decoder step for 16 sequences costs little more than for one (the
matrix products get wider, the per-step Python and kernel-launch overhead is shared), so at
concurrency 16 a batched server answers several times more requests per second than one that
calls `generate` once per request (benchmarks/bench_server.py measures it).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, cast

import torch
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    GenerationConfig,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from pegasus_gsg.data.padding import right_pad
from pegasus_gsg.evaluation.generation import GenerationOptions

from .settings import ServingConfig

__all__ = ["GenerationOptions", "ServingConfig"]  # re-exported: their home moved

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


def _until_eos(row: list[int], eos_ids: set[int]) -> list[int]:
    """The row up to and including its first `</s>` (rows that ended early are padded)."""
    end = next((i + 1 for i, tok in enumerate(row) if tok in eos_ids), len(row))
    return row[:end]


class _StopWhenAbandoned(StoppingCriteria):
    """Ends generation early once every request of the batch has been cancelled or timed out."""

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.Tensor:
        stop = all(job.abandoned() for job in self.jobs)
        done = torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)
        return cast(torch.BoolTensor, done)


class TransformersBackend:
    """`model.generate` on right-padded batches (the reference the other backend must equal)."""

    name = "transformers"

    def __init__(self, model_dir: Path, device: str) -> None:
        self.device = torch.device(device)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).to(self.device).eval()
        self.compute_type = str(self.model.dtype).removeprefix("torch.")
        self.config = self.model.config
        self.parameters = sum(p.numel() for p in self.model.parameters())

    @torch.inference_mode()
    def generate(
        self, jobs: list[Job], options: GenerationOptions, base: GenerationConfig
    ) -> list[list[int]]:
        input_ids, attention_mask = right_pad(
            [j.prepared.input_ids for j in jobs], base.pad_token_id
        )
        config = GenerationConfig.from_dict({**base.to_dict(), **options.generation_kwargs()})
        if options.do_sample and options.seed is not None:
            torch.manual_seed(options.seed)
        streamer = jobs[0].streamer if len(jobs) == 1 else None
        output = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            generation_config=config,
            stopping_criteria=StoppingCriteriaList([_StopWhenAbandoned(jobs)]),
            streamer=streamer if options.num_beams == 1 else None,
        )
        rows: list[list[int]] = output.cpu()[:, 1:].tolist()  # drop the decoder start token
        return rows


class Ct2Backend:
    """CTranslate2 `Translator` on a converted copy of the model (pegasus_gsg/ct2.py).

    Streams through `generate_tokens`; cancellation is checked after every greedy/sampling
    step (beam search runs to its end, as in CTranslate2 it cannot be interrupted).
    """

    name = "ctranslate2"

    def __init__(self, model_dir: Path, device: str, config: ServingConfig) -> None:
        from pegasus_gsg.evaluation import ct2

        compute_type = ct2.resolve_compute_type(config.compute_type, device)
        if ct2.is_ct2_dir(model_dir):
            path = model_dir
        else:
            path = ct2.cached_conversion(model_dir, compute_type, config.ct2_cache_dir)
        self.decoder = ct2.Ct2Decoder(
            path, device=device, compute_type=compute_type, threads=config.threads
        )
        self.compute_type = self.decoder.compute_type
        self.path = path
        self.parameters = 0  # not exposed by CTranslate2

    def generate(
        self, jobs: list[Job], options: GenerationOptions, base: GenerationConfig
    ) -> list[list[int]]:
        if len(jobs) == 1 and jobs[0].streamer is not None and options.num_beams == 1:
            return [self._stream(jobs[0], options, base)]
        return self.decoder.generate(
            [job.prepared.input_ids for job in jobs],
            options,
            should_stop=lambda: all(job.abandoned() for job in jobs),
        )

    def _stream(self, job: Job, options: GenerationOptions, base: GenerationConfig) -> list[int]:
        streamer = job.streamer
        assert streamer is not None
        start = torch.tensor([base.decoder_start_token_id])
        streamer.put(start)  # the "prompt": skipped
        ids: list[int] = []
        tokens = self.decoder.generate_tokens(job.prepared.input_ids, options)
        try:
            for token in tokens:
                ids.append(token)
                streamer.put(torch.tensor([token]))
                if job.abandoned():
                    break
        finally:
            tokens.close()
            streamer.end()
        return ids


class SummarizerModel:
    """A `save_pretrained` seq2seq model (or a converted CTranslate2 directory) and tokenizer,
    with validation and batched generation on the backend `config.backend` names.

    `prepare` and `resolve_options` are safe to call from many threads; `generate` is called by
    the batching worker only.
    """

    def __init__(self, model_dir: str | Path, config: ServingConfig | None = None) -> None:
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise FileNotFoundError(f"model directory {self.model_dir} does not exist")
        if not os.access(self.model_dir, os.R_OK | os.X_OK):
            raise PermissionError(
                f"model directory {self.model_dir} is not readable by this process (uid "
                f"{os.getuid()}): make it readable (e.g. chmod -R a+rX) or run as its owner"
            )
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"model directory {self.model_dir} has no config.json: expected a save_pretrained "
                "directory (config, weights, tokenizer) or one from `pegasus-gsg export-ct2`"
            )
        self.config = config or ServingConfig()
        device = self.config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(device)
        self.backend: TransformersBackend | Ct2Backend
        if self.config.backend == "ctranslate2":
            self.backend = Ct2Backend(self.model_dir, self.device.type, self.config)
            manifest = self.backend.decoder.manifest
            files_dir = self.backend.path  # tokenizer + generation config copied beside
            position_limit = int(manifest.get("max_position_embeddings") or 1024)
            self._name = str(manifest.get("model_name") or self.model_dir.name)
            decoder_start = manifest.get("decoder_start_token_id")
        else:
            self.backend = TransformersBackend(self.model_dir, device)
            files_dir = self.model_dir
            model_config = self.backend.config
            position_limit = int(getattr(model_config, "max_position_embeddings", None) or 1024)
            self._name = str(getattr(model_config, "_name_or_path", "") or self.model_dir.name)
            decoder_start = model_config.decoder_start_token_id
        self.tokenizer = AutoTokenizer.from_pretrained(files_dir)
        # A fast tokenizer flips its Rust backend's truncation settings inside a call, so two
        # threads using one tokenizer can fail with "Already borrowed". Encoding (handler
        # threads) is serialized by a lock -- it is cheap next to generation -- and decoding
        # (the worker, incl. streaming) uses a second instance that nothing else touches.
        self._tokenizer_lock = threading.Lock()
        self._decoder = AutoTokenizer.from_pretrained(files_dir)
        self.base_generation_config = self._load_generation_config(files_dir, decoder_start)
        self.max_input_tokens = self.config.max_input_tokens or min(position_limit, 4096)
        if self.max_input_tokens > position_limit:
            raise ValueError(
                f"max_input_tokens ({self.max_input_tokens}) exceeds the model's "
                f"max_position_embeddings ({position_limit})"
            )
        self.defaults = self._default_options()
        if isinstance(self.backend, Ct2Backend) and not self.base_generation_config.early_stopping:
            logger.warning(
                "generation config has early_stopping=False: CTranslate2 ends a beam search "
                "once num_beams hypotheses have finished (transformers' early_stopping=True), "
                "so beam-search summaries may differ from the transformers backend"
            )
        logger.info(
            "loaded %s on %s with %s (%s): vocab %d, max input tokens %d",
            self.model_dir,
            self.device,
            self.backend.name,
            self.backend.compute_type,
            len(self.tokenizer),
            self.max_input_tokens,
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def compute_type(self) -> str:
        return self.backend.compute_type

    def _load_generation_config(
        self, files_dir: Path, decoder_start: int | None
    ) -> GenerationConfig:
        try:
            config = GenerationConfig.from_pretrained(files_dir)
        except OSError:
            if isinstance(self.backend, TransformersBackend):
                config = GenerationConfig.from_model_config(self.backend.config)
            else:
                config = GenerationConfig()
        if config.decoder_start_token_id is None:
            config.decoder_start_token_id = decoder_start
        if config.pad_token_id is None:
            config.pad_token_id = self.tokenizer.pad_token_id
        if config.eos_token_id is None:
            config.eos_token_id = self.tokenizer.eos_token_id
        return config

    def _default_options(self) -> GenerationOptions:
        """The model's generation config where it has a value, clamped to the limits."""
        gc = self.base_generation_config
        max_new = gc.max_new_tokens or self.config.default_max_new_tokens
        max_new = min(max_new, self.config.max_new_tokens_limit)
        return GenerationOptions(
            max_new_tokens=max_new,
            min_new_tokens=min(gc.min_new_tokens or 0, max_new),
            num_beams=min(gc.num_beams or 1, self.config.max_num_beams),
            length_penalty=float(gc.length_penalty if gc.length_penalty is not None else 1.0),
            no_repeat_ngram_size=gc.no_repeat_ngram_size or 0,
            do_sample=False,
            temperature=float(gc.temperature or 1.0),
            top_p=float(gc.top_p or 1.0),
        )

    def resolve_options(self, **overrides: Any) -> GenerationOptions:
        """Defaults updated with the request's set fields, checked against the server limits.

        Raises:
            ValueError: a value is out of range; the message names the field and the range.
        """
        unknown = set(overrides) - {f.name for f in fields(GenerationOptions)}
        if unknown:
            raise ValueError(f"unknown generation options: {sorted(unknown)}")
        limit = self.config.max_new_tokens_limit
        if "max_new_tokens" in overrides and not 1 <= overrides["max_new_tokens"] <= limit:
            raise ValueError(
                f"options.max_new_tokens must be in 1..{limit}, got {overrides['max_new_tokens']}"
            )
        beams = self.config.max_num_beams
        if "num_beams" in overrides and not 1 <= overrides["num_beams"] <= beams:
            raise ValueError(
                f"options.num_beams must be in 1..{beams}, got {overrides['num_beams']}"
            )
        options = replace(self.defaults, **overrides)
        if options.min_new_tokens > options.max_new_tokens and "min_new_tokens" not in overrides:
            options = replace(options, min_new_tokens=options.max_new_tokens)
        return options

    def prepare(self, text: str, truncate: bool = False) -> Prepared:
        """Tokenize one input and apply the length limit.

        Raises:
            ValueError: the text is empty, or longer than `max_input_tokens` and `truncate` is off.
        """
        if not text.strip():
            raise ValueError("text is empty")
        limit = self.max_input_tokens
        with self._tokenizer_lock:
            ids = self.tokenizer(text)["input_ids"]
            if len(ids) <= limit:
                return Prepared(ids, truncated=False)
            if not truncate:
                raise ValueError(
                    f"text has {len(ids)} tokens, over the server's limit of {limit} input "
                    "tokens; shorten it or ask for truncation (overlong=OVERLONG_POLICY_TRUNCATE)"
                )
            ids = self.tokenizer(text, truncation=True, max_length=limit)["input_ids"]
        return Prepared(ids, truncated=True)

    def make_streamer(self, timeout: float | None = None) -> TextIteratorStreamer:
        """A streamer whose concatenated output equals `decode` of the whole summary."""
        return TextIteratorStreamer(
            self._decoder, skip_prompt=True, skip_special_tokens=True, timeout=timeout
        )

    def generate(self, jobs: list[Job]) -> list[tuple[str, int]]:
        """Summaries and generated-token counts for jobs that share one options value."""
        options = jobs[0].options
        if any(job.options != options for job in jobs):
            raise ValueError("a batch must share one GenerationOptions value")
        rows = self.backend.generate(jobs, options, self.base_generation_config)
        eos_id = self.base_generation_config.eos_token_id
        eos_ids = set(eos_id if isinstance(eos_id, list) else [eos_id])
        results = []
        for row in rows:
            ids = _until_eos(row, eos_ids)
            text = str(self._decoder.decode(ids, skip_special_tokens=True))
            results.append((text, len(ids)))
        return results


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

    def __init__(
        self, model: SummarizerModel, on_batch: Callable[[int], None] | None = None
    ) -> None:
        self.model = model
        self.config = model.config
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=self.config.max_queue)
        self._stats = BatchingStats()
        self._stats_lock = threading.Lock()
        self._on_batch = on_batch
        self._closed = False
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
        return self._queue.qsize()

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
        now = time.monotonic()
        live = []
        for job in window:
            if job.abandoned(now) or not job.future.set_running_or_notify_cancel():
                if job.streamer is not None:
                    job.streamer.end()
                if not job.future.done():
                    job.future.set_exception(DroppedError("deadline passed while queued"))
                self._count(dropped=1)
            else:
                live.append(job)
        groups: dict[object, list[Job]] = {}
        for job in live:
            groups.setdefault(job.batch_key(), []).append(job)
        for group in groups.values():
            for batch in self._split(sorted(group, key=lambda j: len(j.prepared.input_ids))):
                self._run_batch(batch)

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

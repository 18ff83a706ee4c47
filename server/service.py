"""The gRPC servicer: validate the request, hand it to the batcher, map errors to status codes.

| cause                                            | status             |
|--------------------------------------------------|--------------------|
| empty text, option out of range, over-long input | INVALID_ARGUMENT   |
| request queue full                               | RESOURCE_EXHAUSTED |
| model still loading, server shutting down        | UNAVAILABLE        |
| deadline passed (queued or generating)           | DEADLINE_EXCEEDED  |
| generation raised                                | INTERNAL           |

The servicer holds no model logic: it converts protobuf messages to `GenerationOptions` and
`Job`s (server/batcher.py) and back.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import time
from collections.abc import Callable, Iterator
from dataclasses import fields
from typing import TYPE_CHECKING, Any

import grpc

from pegasus_gsg.evaluation.generation import GenerationOptions
from pegasus_gsg.serving.protos import pb2, pb2_grpc

from .batcher import (
    Batcher,
    DroppedError,
    Job,
    QueueFullError,
    ShuttingDownError,
    SummaryResult,
)

if TYPE_CHECKING:
    from .summarizer import SummarizerModel  # torch: imported when the model loads

logger = logging.getLogger(__name__)

_OPTION_FIELDS = [f.name for f in fields(GenerationOptions)]
# grpc reports "no deadline" as a huge time_remaining(); anything beyond a day means none.
_NO_DEADLINE_S = 86_400.0


class _RpcError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _status_of(err: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(err, _RpcError):
        return err.code, err.message
    if isinstance(err, ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(err)
    if isinstance(err, QueueFullError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(err)
    if isinstance(err, ShuttingDownError):
        return grpc.StatusCode.UNAVAILABLE, str(err)
    if isinstance(err, (DroppedError, concurrent.futures.TimeoutError, queue.Empty)):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the summary was ready"
    if isinstance(err, concurrent.futures.CancelledError):
        return grpc.StatusCode.CANCELLED, "request cancelled"
    logger.error("request failed: %r", err)
    return grpc.StatusCode.INTERNAL, f"generation failed: {type(err).__name__}: {err}"


def options_from_proto(message: pb2.GenerationOptions) -> dict[str, Any]:
    """The fields the client set (proto3 `optional` tells unset from zero)."""
    return {name: getattr(message, name) for name in _OPTION_FIELDS if message.HasField(name)}


def options_to_proto(options: GenerationOptions) -> pb2.GenerationOptions:
    values = {name: getattr(options, name) for name in _OPTION_FIELDS}
    return pb2.GenerationOptions(**{k: v for k, v in values.items() if v is not None})


def result_to_proto(result: SummaryResult) -> pb2.SummarizeResponse:
    return pb2.SummarizeResponse(
        summary=result.summary,
        input_tokens=result.input_tokens,
        output_tokens=result.output_tokens,
        truncated=result.truncated,
        queue_seconds=result.queue_seconds,
        generate_seconds=result.generate_seconds,
        batch_size=result.batch_size,
    )


# pb2_grpc is generated at run time (pegasus_gsg/protos.py), so mypy sees its classes as Any.
class SummarizerService(pb2_grpc.SummarizerServicer):  # type: ignore[misc]
    """Summarizer RPCs over a `Batcher`; answers UNAVAILABLE until `attach` is called."""

    def __init__(self, on_request: Callable[[str, str, float], None] | None = None) -> None:
        self.model: SummarizerModel | None = None
        self.batcher: Batcher | None = None
        self._on_request = on_request

    def attach(self, model: SummarizerModel, batcher: Batcher) -> None:
        self.batcher = batcher
        self.model = model

    # -- helpers ------------------------------------------------------------------------------

    def _ready(self) -> tuple[SummarizerModel, Batcher]:
        if self.model is None or self.batcher is None:
            raise _RpcError(grpc.StatusCode.UNAVAILABLE, "model is still loading")
        return self.model, self.batcher

    @staticmethod
    def _remaining(context: grpc.ServicerContext) -> float | None:
        remaining = context.time_remaining()
        return None if remaining is None or remaining > _NO_DEADLINE_S else remaining

    def _make_job(
        self,
        model: SummarizerModel,
        text: str,
        options: GenerationOptions,
        overlong: int,
        context: grpc.ServicerContext,
        where: str = "",
    ) -> Job:
        try:
            prepared = model.prepare(text, truncate=overlong == pb2.OVERLONG_POLICY_TRUNCATE)
        except ValueError as err:
            raise ValueError(f"{where}{err}") from None
        remaining = self._remaining(context)
        deadline = None if remaining is None else time.monotonic() + remaining
        return Job(prepared=prepared, options=options, deadline=deadline)

    def _submit(self, batcher: Batcher, jobs: list[Job], context: grpc.ServicerContext) -> None:
        for job in jobs:
            context.add_callback(job.cancel)
        try:
            for job in jobs:
                batcher.submit(job)
        except Exception:
            for job in jobs:
                job.cancel()
            raise

    def _result(self, job: Job, context: grpc.ServicerContext) -> SummaryResult:
        return job.future.result(timeout=self._remaining(context))

    def _finish(self, method: str, started: float, code: grpc.StatusCode) -> None:
        if self._on_request is not None:
            self._on_request(method, code.name, time.monotonic() - started)

    def _unary(self, method: str, context: grpc.ServicerContext, handler: Callable[[], Any]) -> Any:
        started = time.monotonic()
        try:
            response = handler()
        except Exception as err:
            code, message = _status_of(err)
            self._finish(method, started, code)
            context.abort(code, message)
        self._finish(method, started, grpc.StatusCode.OK)
        return response

    # -- RPCs ---------------------------------------------------------------------------------

    def Summarize(
        self, request: pb2.SummarizeRequest, context: grpc.ServicerContext
    ) -> pb2.SummarizeResponse:
        def handle() -> pb2.SummarizeResponse:
            model, batcher = self._ready()
            options = model.resolve_options(**options_from_proto(request.options))
            job = self._make_job(model, request.text, options, request.overlong, context)
            self._submit(batcher, [job], context)
            return result_to_proto(self._result(job, context))

        return self._unary("Summarize", context, handle)

    def SummarizeBatch(
        self, request: pb2.SummarizeBatchRequest, context: grpc.ServicerContext
    ) -> pb2.SummarizeBatchResponse:
        def handle() -> pb2.SummarizeBatchResponse:
            model, batcher = self._ready()
            if not request.texts:
                raise ValueError("texts is empty: send at least one text")
            if len(request.texts) > model.config.max_queue:
                raise ValueError(
                    f"texts has {len(request.texts)} items, over the server's limit of "
                    f"{model.config.max_queue} per call"
                )
            options = model.resolve_options(**options_from_proto(request.options))
            jobs = [
                self._make_job(model, text, options, request.overlong, context, f"texts[{i}]: ")
                for i, text in enumerate(request.texts)
            ]
            self._submit(batcher, jobs, context)
            results = [result_to_proto(self._result(job, context)) for job in jobs]
            return pb2.SummarizeBatchResponse(results=results)

        return self._unary("SummarizeBatch", context, handle)

    def SummarizeStream(
        self, request: pb2.SummarizeRequest, context: grpc.ServicerContext
    ) -> Iterator[pb2.SummarizeStreamResponse]:
        started = time.monotonic()
        try:
            model, batcher = self._ready()
            options = model.resolve_options(**options_from_proto(request.options))
            job = self._make_job(model, request.text, options, request.overlong, context)
            if options.num_beams == 1:  # beam search cannot stream: one final message instead
                job.streamer = model.make_streamer(timeout=self._remaining(context))
            self._submit(batcher, [job], context)
            streamed = []
            if job.streamer is not None:
                for delta in job.streamer:
                    if delta:
                        streamed.append(delta)
                        yield pb2.SummarizeStreamResponse(text_delta=delta)
            result = self._result(job, context)
        except Exception as err:
            code, message = _status_of(err)
            self._finish("SummarizeStream", started, code)
            context.abort(code, message)
        rest = result.summary[len("".join(streamed)) :] if streamed else result.summary
        self._finish("SummarizeStream", started, grpc.StatusCode.OK)
        yield pb2.SummarizeStreamResponse(text_delta=rest, done=True, final=result_to_proto(result))

    def GetModelInfo(
        self, request: pb2.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> pb2.ModelInfo:
        def handle() -> pb2.ModelInfo:
            model, batcher = self._ready()
            stats = batcher.stats()
            config = model.config
            return pb2.ModelInfo(
                model_name=model.name,
                model_path=str(model.model_dir),
                max_input_tokens=model.max_input_tokens,
                vocab_size=len(model.tokenizer),
                defaults=options_to_proto(model.defaults),
                max_new_tokens_limit=config.max_new_tokens_limit,
                max_num_beams=config.max_num_beams,
                max_batch_size=config.max_batch_size,
                max_batch_tokens=config.max_batch_tokens,
                max_wait_ms=config.max_wait_ms,
                max_queue=config.max_queue,
                backend=model.backend_name,
                compute_type=model.compute_type,
                stats=pb2.BatchingStats(
                    requests_completed=stats.requests_completed,
                    requests_failed=stats.requests_failed,
                    requests_dropped=stats.requests_dropped,
                    batches=stats.batches,
                    max_batch_size_seen=stats.max_batch_size_seen,
                    mean_batch_size=stats.mean_batch_size,
                    queue_depth=batcher.queue_depth(),
                ),
            )

        return self._unary("GetModelInfo", context, handle)

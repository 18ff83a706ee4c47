"""Load a seq2seq model and generate token ids for a batch of jobs (no grpc, no batching policy).

Two backends behind one call, `generate(jobs, options, base_config) -> rows of token ids`:

- `TransformersBackend`: `model.generate` on right-padded batches with an attention mask. For an
  encoder-decoder, padding the encoder input on the right leaves every real position's encoding
  unchanged, so batched greedy output equals unbatched output (tests/test_server.py checks it).
  This is the reference the other backend must equal.
- `Ct2Backend`: CTranslate2's `Translator` on a converted copy of the model
  (pegasus_gsg/evaluation/ct2.py converts once and caches it), int8 or float on CPU/GPU.

Both stop early once every job of the batch has been cancelled or has passed its deadline, and
both stream a lone greedy/sampling job token by token into its streamer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from transformers import (
    AutoModelForSeq2SeqLM,
    GenerationConfig,
    StoppingCriteria,
    StoppingCriteriaList,
)

from pegasus_gsg.data.padding import right_pad
from pegasus_gsg.evaluation.generation import GenerationOptions

from .batcher import Job
from .settings import ServingConfig


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
    """CTranslate2 `Translator` on a converted copy of the model (pegasus_gsg/evaluation/ct2.py).

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
            path,
            device=device,
            compute_type=compute_type,
            threads=config.intra_threads(),
            inter_threads=config.inter_threads,
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


Backend = TransformersBackend | Ct2Backend

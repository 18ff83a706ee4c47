"""The summarizer the server serves: a model directory's tokenizer, limits, defaults and decoding.

`SummarizerModel` loads a `save_pretrained` seq2seq model (or a directory from
`pegasus-gsg export-ct2`) on the backend `ServingConfig.backend` names (server/backends.py) and
owns everything about a request that is not scheduling: handler threads call `prepare`
(tokenize, apply the input limit) and `resolve_options` (the model's generation defaults
updated with the request's options, checked against the server's limits); the batching worker
(server/batcher.py) calls `generate` with a batch of jobs that share one options value and
gets back decoded summaries cut at the first `</s>`.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, GenerationConfig, TextIteratorStreamer

from pegasus_gsg.evaluation.generation import GenerationOptions

from .backends import Backend, Ct2Backend, TransformersBackend
from .batcher import Job, Prepared
from .settings import ServingConfig

logger = logging.getLogger(__name__)


def _until_eos(row: list[int], eos_ids: set[int]) -> list[int]:
    """The row up to and including its first `</s>` (rows that ended early are padded)."""
    end = next((i + 1 for i, tok in enumerate(row) if tok in eos_ids), len(row))
    return row[:end]


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
        self.backend: Backend
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

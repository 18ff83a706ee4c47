"""Serving settings of one process: limits, batching knobs and the generation backend.

Kept free of torch and grpc imports so that `pegasus-gsg serve --help` and the argument parser
(server/__main__.py takes its defaults from here: one home for each default) stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BACKENDS = ("transformers", "ctranslate2")


@dataclass(frozen=True)
class ServingConfig:
    """Limits and batching knobs of one server process."""

    max_batch_size: int = 16
    """Most requests in one `generate` call (1..1024)."""
    max_batch_tokens: int = 16384
    """Most padded input tokens in one batch (batch size x longest input), >= 1."""
    max_wait_ms: float = 5.0
    """How long the worker waits for batch-mates after a first request arrives (0..10000)."""
    length_window: int = 64
    """Most requests the worker takes at once and sorts by input length before cutting them
    into batches: max_batch_size (or fewer) arrive within max_wait_ms as always, and with a
    full batch in hand it also takes those already queued, up to this many (<= max_batch_size:
    one batch's worth, the behaviour before this setting). Acts only when requests queue up
    behind the running batch; 64 measured +7-12% req/s on natural-length news at concurrency
    32 (docs/serving.md, "What to tune"). Requests taken into a window count in the queue
    depth (metrics) but no longer against max_queue."""
    max_queue: int = 256
    """Most requests waiting for the worker; more get RESOURCE_EXHAUSTED (>= 1)."""
    max_input_tokens: int | None = None
    """Input limit incl. `</s>`; None = the model's max_position_embeddings (capped at 4096)."""
    max_new_tokens_limit: int = 512
    """Largest max_new_tokens a request may ask for (>= 1)."""
    max_num_beams: int = 8
    """Largest num_beams a request may ask for (>= 1)."""
    default_max_new_tokens: int = 64
    """max_new_tokens when neither the request nor the model's generation config sets one."""
    device: str | None = None
    """cpu or cuda; None = cuda when available, else cpu."""
    backend: str = "transformers"
    """Generation engine: transformers (`generate`) or ctranslate2 (converted once, cached)."""
    compute_type: str | None = None
    """ctranslate2 only: float32, int8, bfloat16, ...; None = float32 on CPU, bfloat16 on GPU."""
    ct2_cache_dir: Path | None = None
    """ctranslate2 only: where conversions are cached; None = MODEL/.ct2."""
    threads: int = 0
    """Generation threads; ctranslate2 splits them over `inter_threads` replicas (0 = its
    default; torch's are set by the caller)."""
    inter_threads: int = 1
    """ctranslate2 only: model replicas that decode parts of one batch in parallel, each with
    threads // inter_threads intra-op threads (weights shared). 1 = one replica using every
    thread: 2 measured mixed on a busy 2-core CPU (greedy +22%, beam 4 -11%; docs/serving.md,
    "What to tune"), so it is not the default."""

    def intra_threads(self) -> int:
        """Intra-op threads of each ctranslate2 replica (0 = ctranslate2's default)."""
        return max(1, self.threads // self.inter_threads) if self.threads else 0

    def __post_init__(self) -> None:
        checks = [
            ("max_batch_size", 1 <= self.max_batch_size <= 1024, "1..1024"),
            ("max_batch_tokens", self.max_batch_tokens >= 1, ">= 1"),
            ("max_wait_ms", 0 <= self.max_wait_ms <= 10_000, "0..10000"),
            ("length_window", 0 <= self.length_window <= 65536, "0..65536"),
            ("max_queue", self.max_queue >= 1, ">= 1"),
            (
                "max_input_tokens",
                self.max_input_tokens is None or self.max_input_tokens >= 2,
                ">= 2 or None",
            ),
            ("max_new_tokens_limit", self.max_new_tokens_limit >= 1, ">= 1"),
            ("max_num_beams", self.max_num_beams >= 1, ">= 1"),
            (
                "default_max_new_tokens",
                1 <= self.default_max_new_tokens <= self.max_new_tokens_limit,
                "1..max_new_tokens_limit",
            ),
        ]
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.compute_type is not None and self.backend != "ctranslate2":
            raise ValueError(
                f"compute_type {self.compute_type!r} needs backend ctranslate2 "
                f"(got backend {self.backend!r})"
            )
        checks.append(("threads", self.threads >= 0, ">= 0"))
        checks.append(("inter_threads", self.inter_threads >= 1, ">= 1"))
        if self.inter_threads != 1 and self.backend != "ctranslate2":
            raise ValueError(
                f"inter_threads {self.inter_threads} needs backend ctranslate2 "
                f"(got backend {self.backend!r})"
            )
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{name} must be {allowed}, got {getattr(self, name)}")

"""Decoding settings of one summarization request, shared by the server and evaluation.

One value type for both generation engines: `generation_kwargs()` maps it onto transformers'
`GenerationConfig`; `pegasus_gsg.evaluation.ct2.Ct2Decoder` maps the same fields onto CTranslate2's
`translate_batch` / `generate_tokens` arguments. Frozen and hashable, so the server's batcher can
group requests whose options are equal into one decoding call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GenerationOptions:
    """Decoding settings of one request; identical options may share a `generate` call."""

    max_new_tokens: int
    """Upper bound on generated tokens (>= 1)."""
    min_new_tokens: int = 0
    """Tokens generated before `</s>` is allowed (0..max_new_tokens)."""
    num_beams: int = 1
    """1 = greedy (or sampling); > 1 = beam search."""
    length_penalty: float = 1.0
    """Beam search score is divided by length**length_penalty; finite."""
    no_repeat_ngram_size: int = 0
    """0 = off; n > 0 forbids repeating any n-gram of the summary."""
    do_sample: bool = False
    """Sample from the distribution instead of taking the argmax (needs num_beams == 1)."""
    temperature: float = 1.0
    """Sampling temperature, > 0."""
    top_p: float = 1.0
    """Nucleus sampling mass, in (0, 1]."""
    seed: int | None = None
    """Sampling seed; a seeded request runs alone so its output depends only on the seed."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"options.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(
                f"options.min_new_tokens must be in 0..max_new_tokens ({self.max_new_tokens}), "
                f"got {self.min_new_tokens}"
            )
        if self.num_beams < 1:
            raise ValueError(f"options.num_beams must be >= 1, got {self.num_beams}")
        if not math.isfinite(self.length_penalty):
            raise ValueError(f"options.length_penalty must be finite, got {self.length_penalty}")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(
                f"options.no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}"
            )
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"options.temperature must be > 0, got {self.temperature}")
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise ValueError(f"options.top_p must be in (0, 1], got {self.top_p}")
        if self.do_sample and self.num_beams != 1:
            raise ValueError(
                f"options.do_sample needs options.num_beams == 1, got {self.num_beams}"
            )
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise ValueError(f"options.seed must be in 0..2**63-1, got {self.seed}")

    def generation_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `GenerationConfig`."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "min_new_tokens": self.min_new_tokens,
            "num_beams": self.num_beams,
            "length_penalty": self.length_penalty,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
            "do_sample": self.do_sample,
        }
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        return kwargs

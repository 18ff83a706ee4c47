"""One GSG pretraining example from per-sentence token ids (shared/GSG.md §4).

Given the token ids of every sentence and the chosen gap sentences:

- each gap sentence is, independently, replaced by one `<mask_1>` with probability `mask_prob`
  (1.0 by default; PEGASUS-LARGE used 0.9 and left the rest in place);
- target = the gap sentences' ids in document order, truncated to `max_target_len − 1`, + `</s>`;
- input = every sentence in order with masked ones replaced, truncated to `max_input_len − 1`,
  + `</s>`;
- MLM (PEGASUS-BASE; off by default): among the input tokens of the *unselected* sentences that
  survive truncation and are not special ids, round(mlm_prob · count) positions are picked
  without replacement; each becomes `<mask_2>` (80%), a random ordinary id in
  [FIRST_PIECE_ID, vocab_size) (10%) or stays (10%). `mlm_labels` holds the original id at
  picked positions and -100 elsewhere, aligned with `input_ids`.

This runs at batch time in DataLoader workers on sentences read from a memory-mapped store
(numpy uint16/uint32 arrays), so it works on whole arrays: one concatenation for the input, one
for the target, and vectorised MLM draws; no Python loop over tokens.

Random draws, in order: one uniform per gap sentence (only when mask_prob < 1), then the MLM
positions, one uniform per picked position, and the replacement ids (only when mlm_prob > 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from pegasus_gsg.core.gsg import check_gsr, check_gsr_range
from pegasus_gsg.data.vocab import EOS_ID, FIRST_PIECE_ID, IGNORE_INDEX, MASK1_ID, MASK2_ID

TokenIds = Sequence[int] | np.ndarray
"""The ids of one sentence: a list, or an array read from the store (uint16/uint32)."""

_MASK1 = np.array([MASK1_ID], dtype=np.int64)
_EOS = np.array([EOS_ID], dtype=np.int64)
_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass
class ExampleOptions:
    """How a stored pretraining record becomes an example (shared/GSG.md §3-4).

    The one home of these fields and their ranges: `config.DataConfig` extends this class, so a
    training config's `data.gsr`, `data.mask_prob`, ... are these very fields, checked here.
    """

    _error_prefix: ClassVar[str] = ""
    """Prepended to error messages (DataConfig: "config: data.")."""

    gsr: float = 0.3
    """Gap sentence ratio in (0, 1]; used when ``mixed_gsr`` is None (paper's best: 0.3)."""
    mixed_gsr: tuple[float, float] | None = None
    """(low, high): draw gsr uniformly per example and epoch (Mixed & Stochastic: 0.15-0.45)."""
    score_noise: float = 0.0
    """Scores become s·(1+u), u ~ U(−noise, noise), before the top-m cut; 0 <= noise < 1."""
    mask_prob: float = 1.0
    """Probability that a gap sentence becomes ``<mask_1>`` (else left in place); in [0, 1]."""
    mlm_prob: float = 0.0
    """Fraction of non-gap tokens picked for MLM (PEGASUS-BASE: 0.15); in [0, 1). In training,
    > 0 also adds the encoder MLM head and loss."""
    max_input_len: int = 512
    """Encoder tokens including ``</s>``; >= 2."""
    max_target_len: int = 256
    """Decoder target tokens including ``</s>``; >= 2."""

    def __post_init__(self) -> None:
        prefix = self._error_prefix
        check_gsr(self.gsr, f"{prefix}gsr")
        if self.mixed_gsr is not None:
            self.mixed_gsr = check_gsr_range(self.mixed_gsr, f"{prefix}mixed_gsr")
        for name, value, ok, allowed in (
            ("score_noise", self.score_noise, 0.0 <= self.score_noise < 1.0, "in [0, 1)"),
            ("mask_prob", self.mask_prob, 0.0 <= self.mask_prob <= 1.0, "in [0, 1]"),
            ("mlm_prob", self.mlm_prob, 0.0 <= self.mlm_prob < 1.0, "in [0, 1)"),
            ("max_input_len", self.max_input_len, self.max_input_len >= 2, ">= 2"),
            ("max_target_len", self.max_target_len, self.max_target_len >= 2, ">= 2"),
        ):
            if not ok:
                raise ValueError(f"{prefix}{name} must be {allowed}, got {value}")

    @property
    def stochastic(self) -> bool:
        """True when the gap sentences themselves change from epoch to epoch."""
        return self.mixed_gsr is not None or self.score_noise > 0.0

    def mean_gsr(self) -> float:
        """The gsr an average example uses (for length estimates)."""
        return sum(self.mixed_gsr) / 2 if self.mixed_gsr else self.gsr


@dataclass
class PretrainingExample:
    """Encoder input, decoder target and MLM labels of one pretraining example."""

    input_ids: list[int]
    """Encoder token ids, gap sentences masked, ending in `</s>`; at most max_input_len."""
    labels: list[int]
    """Decoder target ids: the gap sentences in document order, ending in `</s>`; at most
    max_target_len."""
    mlm_labels: list[int]
    """Same length as input_ids: the original id where a token was picked for MLM, -100
    (IGNORE_INDEX) elsewhere."""


def _check_args(
    n: int,
    selected: Sequence[int],
    vocab_size: int,
    max_input_len: int,
    max_target_len: int,
    mask_prob: float,
    mlm_prob: float,
) -> list[int]:
    if max_input_len < 1:
        raise ValueError(f"max_input_len must be >= 1 (room for </s>), got {max_input_len}")
    if max_target_len < 1:
        raise ValueError(f"max_target_len must be >= 1 (room for </s>), got {max_target_len}")
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    if not 0.0 <= mlm_prob <= 1.0:
        raise ValueError(f"mlm_prob must be in [0, 1], got {mlm_prob}")
    if vocab_size <= FIRST_PIECE_ID:
        raise ValueError(
            f"vocab_size must be > {FIRST_PIECE_ID} (ids below are special), got {vocab_size}"
        )
    chosen = sorted(int(i) for i in selected)
    if chosen and (chosen[0] < 0 or chosen[-1] >= n):
        raise ValueError(f"selected sentence indices must be in [0, {n}), got {list(selected)}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"selected sentence indices must be distinct, got {list(selected)}")
    return chosen


def build_pretraining_example(
    sentence_ids: Sequence[TokenIds],
    selected: Sequence[int],
    *,
    rng: np.random.Generator,
    vocab_size: int,
    max_input_len: int = 512,
    max_target_len: int = 256,
    mask_prob: float = 1.0,
    mlm_prob: float = 0.0,
) -> PretrainingExample:
    """Build input, target and MLM labels (see the module docstring for the exact rules)."""
    n = len(sentence_ids)
    chosen = _check_args(
        n, selected, vocab_size, max_input_len, max_target_len, mask_prob, mlm_prob
    )
    sentences = sentence_ids  # lists or store arrays: np.concatenate takes both, once

    masked = set(chosen)
    if mask_prob < 1.0 and chosen:
        draws = rng.random(len(chosen))
        masked = {i for i, u in zip(chosen, draws.tolist(), strict=True) if u < mask_prob}

    target = _join([sentences[i] for i in chosen], max_target_len - 1)
    pieces: list[TokenIds] = [_MASK1 if i in masked else s for i, s in enumerate(sentences)]
    input_ids = _join(pieces, max_input_len - 1)

    mlm_labels = np.full(len(input_ids), IGNORE_INDEX, dtype=np.int64)
    if mlm_prob > 0.0 and len(input_ids):
        input_ids = _apply_mlm(input_ids, pieces, chosen, mlm_labels, rng, vocab_size, mlm_prob)

    return PretrainingExample(
        input_ids=np.concatenate([input_ids, _EOS]).tolist(),
        labels=np.concatenate([target, _EOS]).tolist(),
        mlm_labels=np.concatenate([mlm_labels, [IGNORE_INDEX]]).tolist(),
    )


def _join(pieces: Sequence[TokenIds], limit: int) -> np.ndarray:
    """The pieces concatenated as int64 and cut to `limit` ids (one copy; uint16 widened)."""
    return np.concatenate([*pieces, _EMPTY])[:limit].astype(np.int64, copy=False)


def _apply_mlm(
    input_ids: np.ndarray,
    pieces: Sequence[TokenIds],
    chosen: list[int],
    mlm_labels: np.ndarray,
    rng: np.random.Generator,
    vocab_size: int,
    mlm_prob: float,
) -> np.ndarray:
    """Pick and corrupt MLM positions in place of a copy of `input_ids`; fills `mlm_labels`."""
    # True for every input position that belongs to an unselected sentence.
    eligible_piece = np.ones(len(pieces), dtype=bool)
    eligible_piece[chosen] = False
    eligible = np.repeat(eligible_piece, list(map(len, pieces)))[: len(input_ids)]
    eligible &= input_ids >= FIRST_PIECE_ID  # special ids are never picked
    candidates = np.flatnonzero(eligible)
    count = int(np.floor(mlm_prob * len(candidates) + 0.5))
    if count == 0:
        return input_ids
    # Positions in random order are not needed, so skip choice()'s final shuffle.
    picked = candidates[rng.choice(len(candidates), size=count, replace=False, shuffle=False)]
    mlm_labels[picked] = input_ids[picked]
    kind = rng.random(count)
    corrupted: np.ndarray = input_ids.copy()
    corrupted[picked[kind < 0.8]] = MASK2_ID
    random_slots = picked[(kind >= 0.8) & (kind < 0.9)]
    corrupted[random_slots] = rng.integers(FIRST_PIECE_ID, vocab_size, size=len(random_slots))
    return corrupted

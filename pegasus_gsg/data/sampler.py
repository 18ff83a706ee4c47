"""Length-bucketed batches under a padded-token budget, deterministic and distributed-aware.

Why: a batch is padded to its longest example, so batching documents of random lengths wastes
compute on pad tokens. Sorting by length first puts similar lengths together, while a token
budget (rather than a fixed batch size) keeps every batch about the same size in memory: many
short examples or a few long ones. bench_loader.py, 8192-token budget, pad tokens among encoder
inputs: Reuters GSG examples 66% in random batches -> 2% bucketed; AESLC emails 62% -> 0.4%.

The budget and the sort use one length per example, the encoder input's. Labels are not sorted
for, so they pad more (Reuters GSG targets: ~55% of label positions are padding, AESLC subjects
~68%); they are short next to the inputs (inputs and labels together: 30% and 12%). Sorting on a
coarse input length and then on the label length trades one for the other (inputs 7%, labels
34%, together 18% with 16-token input buckets on Reuters), so it is left out.

One epoch, for a given ``(seed, epoch)``:

1. Shuffle all indices (``shuffle=True``), then cut them into windows of ``window_size``.
2. Within each window, sort by length, longest first; ties keep their shuffled order, so equal
   lengths land in different batches each epoch.
3. Walk the sorted window and cut batches greedily: a batch starting at an example of length
   ``L`` (its longest, thanks to the descending sort) takes ``min(max_tokens // L,
   max_batch_size)`` examples, so ``batch size * longest length <= max_tokens`` always holds.
   This is O(1) per batch, not per example.
4. Shuffle the batch order, so training does not see lengths in order.
5. Distributed: make the batch count a multiple of ``num_replicas`` (``drop_last=False``: repeat
   batches from the start of the shuffled order, so a few examples are seen twice in that epoch;
   ``drop_last=True``: drop the last few, so a few examples are skipped that epoch), then rank
   ``r`` takes batches ``r, r + R, r + 2R, ...``. Every rank therefore gets the same number of
   batches (DDP never waits on a rank that ran out) and, before padding, disjoint examples.

Larger windows pad less; smaller windows vary batch composition more from epoch to epoch. The
default (the whole dataset up to 65,536 examples) keeps padding near its minimum; the shuffle of
step 1 still changes which examples share a batch whenever lengths tie.

Lengths that change per epoch (Mixed & Stochastic GSG draws a new gap ratio per example and
epoch) are given as a function of the epoch (``PretrainingDataset.epoch_lengths``), called once
per epoch; a fixed estimate there would leave ~30% padding and let real batches overshoot the
budget.

Exact resume: everything above is a pure function of ``(seed, epoch)`` and the lengths, so
``set_epoch(epoch, start_batch=k)`` reproduces the epoch's order and yields only the batches from
``k`` on, without loading any data for the skipped ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np
import torch.utils.data

logger = logging.getLogger(__name__)

DEFAULT_WINDOW_SIZE = 65_536
"""Examples sorted together; see the module docstring for the trade-off."""


class TokenBudgetBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Yields lists of dataset indices whose padded size stays within ``max_tokens``.

    Args:
        lengths: tokens per example (what the batch is padded to, e.g. input lengths), or a
            function of the epoch returning them, for examples whose length changes per epoch
            (``PretrainingDataset.epoch_lengths``); it is called once per epoch.
        max_tokens: budget per batch: ``len(batch) * max(lengths[batch]) <= max_tokens``.
        max_batch_size: optional cap on examples per batch.
        shuffle: shuffle examples before bucketing and batches after; ``False`` gives a fixed
            order (sorted by length within consecutive windows), for evaluation.
        seed: with the epoch, the only source of randomness.
        num_replicas, rank: distributed world size and this process's rank.
        drop_last: how to make the batch count divisible by ``num_replicas`` (see module doc).
        window_size: examples sorted together (default: the whole dataset up to 65,536).

    Raises:
        ValueError: for an empty or non-positive ``lengths``, an example longer than
            ``max_tokens``, or out-of-range ``rank``/``num_replicas``/``max_batch_size``
            (for a ``lengths`` function, the checks on its result run once per epoch).
    """

    def __init__(
        self,
        lengths: np.ndarray | Callable[[int], np.ndarray],
        *,
        max_tokens: int,
        max_batch_size: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
        window_size: int | None = None,
    ) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self.max_tokens = int(max_tokens)
        self.epoch = 0
        self.start_batch = 0
        self.num_examples: int | None = None  # for a lengths function: known after one call
        self._lengths_of_epoch: Callable[[int], np.ndarray] | None = None
        if callable(lengths):
            self._lengths_of_epoch = lengths
        else:
            self.lengths = self._checked(lengths)
            self.num_examples = len(self.lengths)
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1 or None, got {max_batch_size}")
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        if window_size is not None and window_size < 1:
            raise ValueError(f"window_size must be >= 1 or None, got {window_size}")
        self.max_batch_size = max_batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.window_size = window_size or DEFAULT_WINDOW_SIZE
        self._cache: tuple[int, list[np.ndarray]] | None = None

    def _checked(self, lengths: np.ndarray) -> np.ndarray:
        lengths = np.asarray(lengths)
        if lengths.ndim != 1 or lengths.size == 0:
            raise ValueError(f"lengths must be a non-empty 1-D array, got shape {lengths.shape}")
        if self.num_examples is not None and len(lengths) != self.num_examples:
            raise ValueError(
                f"lengths for epoch {self.epoch} has {len(lengths)} entries, "
                f"expected {self.num_examples}"
            )
        if lengths.min() < 1:
            bad = int(np.argmin(lengths))
            raise ValueError(f"lengths must be >= 1, got {lengths[bad]} at index {bad}")
        longest = int(np.argmax(lengths))
        if lengths[longest] > self.max_tokens:
            raise ValueError(
                f"max_tokens={self.max_tokens} is smaller than example {longest} "
                f"({int(lengths[longest])} tokens); raise max_tokens or lower the max length"
            )
        return lengths.astype(np.int64)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order; skip its first ``start_batch`` batches (of this rank).

        ``start_batch`` counts batches this rank has already consumed, which is the same on every
        rank; it holds until the next ``set_epoch``.
        """
        if start_batch < 0:
            raise ValueError(f"start_batch must be >= 0, got {start_batch}")
        self.epoch = epoch
        self.start_batch = start_batch

    def _global_batches(self) -> list[np.ndarray]:
        """All ranks' batches for the current epoch, in training order (cached per epoch)."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        if self._lengths_of_epoch is None:
            lengths = self.lengths
        else:
            lengths = self._checked(self._lengths_of_epoch(self.epoch))
            self.num_examples = len(lengths)
        rng = np.random.default_rng([self.seed, self.epoch])
        n = len(lengths)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        cap = self.max_batch_size or n
        batches: list[np.ndarray] = []
        for start in range(0, n, self.window_size):
            window = order[start : start + self.window_size]
            # Stable sort keeps the shuffled order among equal lengths.
            window = window[np.argsort(-lengths[window], kind="stable")]
            longest = lengths[window]
            i = 0
            while i < len(window):
                size = min(self.max_tokens // int(longest[i]), cap)
                batches.append(window[i : i + size])
                i += size
        if self.shuffle:
            batches = [batches[j] for j in rng.permutation(len(batches))]
        remainder = len(batches) % self.num_replicas
        if remainder:
            if self.drop_last:
                batches = batches[: len(batches) - remainder]
                if not batches:
                    logger.warning(
                        "epoch %d: %d batches for %d replicas with drop_last: nothing to yield",
                        self.epoch,
                        remainder,
                        self.num_replicas,
                    )
            else:
                missing = self.num_replicas - remainder
                batches = batches + [batches[j % len(batches)] for j in range(missing)]
        self._cache = (self.epoch, batches)
        return batches

    @property
    def batches_per_epoch(self) -> int:
        """Batches this rank gets in the current epoch, skipped ones included."""
        return len(self._global_batches()) // self.num_replicas

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._global_batches()
        first = self.rank + self.start_batch * self.num_replicas
        for batch in batches[first :: self.num_replicas]:
            yield batch.tolist()

    def __len__(self) -> int:
        """Batches this rank will still yield this epoch (after ``start_batch``)."""
        return max(self.batches_per_epoch - self.start_batch, 0)

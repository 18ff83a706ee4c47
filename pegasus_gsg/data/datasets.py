"""Torch datasets over the token store: GSG pretraining examples built at batch time, and
fine-tuning pairs.

The store (data/store/) holds, per pretraining document, the token ids of every sentence and the
document's GSG ranking. ``PretrainingDataset.__getitem__`` turns one record into one example
exactly as shared/GSG.md §4 says, at the moment the batch is drawn:

1. an RNG from ``(seed, index, epoch)`` (gsg.example_rng), so the same example in the same epoch
   is identical in any process or DataLoader worker, and a new epoch re-draws everything;
2. the gap sentences: the top ``m`` of the stored ranking for a fixed ``gsr``, or, for Mixed &
   Stochastic, a gsr drawn from ``mixed_gsr`` and scores jittered by ``score_noise``;
3. masking.build_pretraining_example: ``<mask_1>`` per masked gap sentence (``mask_prob``),
   target = gap sentences in document order + ``</s>``, optional MLM ``<mask_2>``, truncation to
   ``max_input_len``/``max_target_len`` keeping ``</s>``.

So one prepared corpus serves any gsr, mask probability, noise or MLM setting, and each epoch
sees a fresh draw, for about 0.2 ms per example in a DataLoader worker (bench_loader.py: a few
thousand examples/s per worker on a busy 2-core machine).

Batching: pass ``dataset.epoch_lengths`` (exact lengths of each epoch's draw) to
TokenBudgetBatchSampler for pretraining, ``dataset.lengths()`` for fine-tuning::

    dataset = PretrainingDataset(store, ExampleOptions(mixed_gsr=(0.15, 0.45), score_noise=0.2),
                                 vocab_size=len(tokenizer), seed=seed)
    sampler = TokenBudgetBatchSampler(dataset.epoch_lengths, max_tokens=8192, seed=seed,
                                      num_replicas=world_size, rank=rank)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=Seq2SeqCollator(),
                        num_workers=2, persistent_workers=True)
    for epoch in range(first_epoch, epochs):
        sampler.set_epoch(epoch, start_batch=batches_done if epoch == first_epoch else 0)
        dataset.set_epoch(epoch)
        for batch in loader: ...

Memory: the store's arrays are memory-mapped. Forked workers share the parent's mapping; the
datasets pickle without their store (``__getstate__``) and reopen it lazily in the receiving
process, so spawned workers map the same files instead of receiving a copy. Either way N workers
share one copy of the token pages in the OS page cache (bench_loader.py measures this).

The epoch lives in a one-element shared-memory tensor, so ``set_epoch`` in the main process
reaches DataLoader workers even with ``persistent_workers=True`` (a plain attribute would be
frozen in each worker's copy of the dataset).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.data

from pegasus_gsg.core.gsg import (
    Ranking,
    example_rng,
    gap_sentence_counts,
    select_from_ranking,
    stochastic_select,
)
from pegasus_gsg.data.collate import Seq2SeqCollator
from pegasus_gsg.data.masking import ExampleOptions, build_pretraining_example
from pegasus_gsg.data.sampler import TokenBudgetBatchSampler
from pegasus_gsg.data.store import TokenStore
from pegasus_gsg.data.vocab import EOS_ID

__all__ = [
    "ExampleOptions",
    "FinetuneDataset",
    "PretrainingDataset",
    "Seq2SeqCollator",
    "TokenBudgetBatchSampler",
]


class _StoreDataset(torch.utils.data.Dataset[dict[str, list[int]]]):
    """Holds a TokenStore that survives pickling into DataLoader workers without a copy."""

    def __init__(self, store: TokenStore, kind: str) -> None:
        if store.kind != kind:
            raise ValueError(f"{type(self).__name__} needs a {kind!r} store, got {store.kind!r}")
        self._store: TokenStore | None = store
        self._store_path = Path(store.path)

    @property
    def store(self) -> TokenStore:
        if self._store is None:
            # Reopened in a spawned worker; the parent already checked the tokenizer.
            self._store = TokenStore.open(self._store_path)
        return self._store

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_store"] = None  # pickling a memmap would copy the whole array
        return state

    def __len__(self) -> int:
        return len(self.store)


class PretrainingDataset(_StoreDataset):
    """GSG pretraining examples from a ``pretrain`` store, re-drawn each epoch.

    Items: ``{"input_ids": [...], "labels": [...]}`` plus ``"mlm_labels"`` (aligned with
    ``input_ids``, -100 where nothing was picked) when ``options.mlm_prob > 0``.
    """

    def __init__(
        self, store: TokenStore, options: ExampleOptions, *, vocab_size: int, seed: int = 0
    ) -> None:
        super().__init__(store, "pretrain")
        if vocab_size < store.vocab_size:
            raise ValueError(
                f"vocab_size={vocab_size} is smaller than the vocabulary of store {store.path} "
                f"({store.vocab_size} ids)"
            )
        self.options = options
        self.vocab_size = vocab_size
        self.seed = seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._lengths: np.ndarray | None = None

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_lengths"] = None  # workers never need it; N int64s per worker otherwise
        return state

    def set_epoch(self, epoch: int) -> None:
        """Examples of a new epoch get new gap ratios, noise and MLM picks."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._epoch.fill_(epoch)

    def select(self, i: int, rng: np.random.Generator) -> list[int]:
        """Indices (ascending) of record ``i``'s gap sentences for this draw."""
        order, scores = self.store.ranking(i)
        ranking = Ranking(order, scores)
        o = self.options
        if o.stochastic:
            gsr_range = o.mixed_gsr or (o.gsr, o.gsr)
            return stochastic_select(ranking, rng, gsr_range=gsr_range, noise=o.score_noise)
        return select_from_ranking(ranking, o.gsr)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} records")
        rng = example_rng(self.seed, i, self.epoch)
        selected = self.select(i, rng)
        o = self.options
        example = build_pretraining_example(
            self.store.sentences(i),
            selected,
            rng=rng,
            vocab_size=self.vocab_size,
            max_input_len=o.max_input_len,
            max_target_len=o.max_target_len,
            mask_prob=o.mask_prob,
            mlm_prob=o.mlm_prob,
        )
        item = {"input_ids": _as_list(example.input_ids), "labels": _as_list(example.labels)}
        if o.mlm_prob > 0:
            item["mlm_labels"] = _as_list(example.mlm_labels)
        return item

    def lengths(self) -> np.ndarray:
        """Estimated input lengths, for length-bucketed batching (computed once, cached).

        Input = source tokens − masked gap-sentence tokens + one ``<mask_1>`` per masked gap
        sentence + ``</s>``, capped at ``max_input_len``, with the gap sentences taken as the
        top ``m`` of the stored ranking at the mean gsr, each masked with ``mask_prob``. Exact
        for a fixed gsr, ``mask_prob=1`` and no noise; with stochastic options it is the
        typical draw, and bench_loader.py measures the padding that results.
        """
        if self._lengths is None:
            self._lengths = self._estimate_lengths()
        return self._lengths

    def epoch_lengths(self, epoch: int) -> np.ndarray:
        """Exact input lengths of every example of ``epoch``.

        Pass this method (rather than ``lengths()``) to TokenBudgetBatchSampler when the gap
        sentences change from epoch to epoch (``mixed_gsr``, ``score_noise``, ``mask_prob < 1``):
        a typical-draw estimate is then off by up to a third for many documents, which both
        pads (Reuters, Mixed & Stochastic: ~30% pad tokens instead of ~5%) and lets real batches
        overshoot ``max_tokens``. It re-makes each example's own draws, as ``__getitem__`` does
        (gap sentences, then masking.py's one uniform per gap sentence when ``mask_prob < 1``;
        MLM never changes a length): 0.1-0.2 ms per example in the main process (of every rank)
        once per epoch, i.e. a few minutes at the start of each epoch for 1M documents; for
        corpora that size prefer fixed options, or ``lengths()`` with a budget margin. For
        fixed options it returns ``lengths()``, which is exact.
        """
        o, store = self.options, self.store
        if not o.stochastic and o.mask_prob == 1.0:
            return self.lengths()
        source = store.lengths()
        out = np.empty(len(store), dtype=np.int64)
        for i in range(len(store)):
            rng = example_rng(self.seed, i, epoch)
            selected = np.asarray(self.select(i, rng), dtype=np.int64)
            if o.mask_prob < 1.0 and len(selected):
                selected = selected[rng.random(len(selected)) < o.mask_prob]
            sentences = store.sentences(i)
            masked_tokens = sum(len(sentences[j]) for j in selected.tolist())
            out[i] = int(source[i]) - masked_tokens + len(selected)
        return np.minimum(out + 1, o.max_input_len)

    def _estimate_lengths(self) -> np.ndarray:
        o, store = self.options, self.store
        gsr = o.mean_gsr()
        source = store.lengths().astype(np.int64)
        gap_tokens = store.target_lengths(gsr).astype(np.int64)  # vectorised over the store
        sentences = np.array([store.num_sentences(i) for i in range(len(store))], dtype=np.int64)
        gaps = gap_sentence_counts(sentences, gsr)
        estimate = np.rint(source - o.mask_prob * (gap_tokens - gaps)).astype(np.int64) + 1
        clipped: np.ndarray = np.clip(estimate, 1, o.max_input_len)
        return clipped


class FinetuneDataset(_StoreDataset):
    """(document, summary) pairs from a ``finetune`` store.

    Items: ``{"input_ids": doc[:max_input_len-1] + [</s>], "labels": summary[:max_target_len-1]
    + [</s>]}``: truncation always keeps the closing ``</s>``.
    """

    def __init__(self, store: TokenStore, *, max_input_len: int, max_target_len: int) -> None:
        super().__init__(store, "finetune")
        if max_input_len < 2:
            raise ValueError(f"max_input_len must be >= 2, got {max_input_len}")
        if max_target_len < 2:
            raise ValueError(f"max_target_len must be >= 2, got {max_target_len}")
        self.max_input_len = max_input_len
        self.max_target_len = max_target_len

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} records")
        document, summary = self.store.pair(i)
        return {
            "input_ids": [*document[: self.max_input_len - 1].tolist(), EOS_ID],
            "labels": [*summary[: self.max_target_len - 1].tolist(), EOS_ID],
        }

    def lengths(self) -> np.ndarray:
        """Exact input lengths (document tokens + ``</s>``, capped at ``max_input_len``)."""
        return np.minimum(self.store.lengths().astype(np.int64) + 1, self.max_input_len)

    def target_lengths(self) -> np.ndarray:
        """Exact label lengths (summary tokens + ``</s>``, capped at ``max_target_len``)."""
        return np.minimum(self.store.target_lengths().astype(np.int64) + 1, self.max_target_len)


def _as_list(ids: Any) -> list[int]:
    return ids.tolist() if isinstance(ids, np.ndarray) else list(ids)

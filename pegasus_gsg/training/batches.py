"""Token-budget batches for the training loop: what a data set must offer, this rank's
sampler and DataLoader, and the endless stream of micro-batches that keeps `TrainState`'s place.

Each micro-batch comes with its records: the data set indices of its examples, in row order
(for a store-backed data set, the store's record numbers, `TokenStore.pair(i)` /
`.sentences(i)`), so that a step whose loss is NaN can name what it was fed.

The sampler shards batches by rank itself, so the DataLoader is NOT passed to
`accelerator.prepare` (which would shard it a second time); the loop moves batches to the
device. The DataLoader gets its own torch.Generator, so creating an iterator never draws from
the global RNG that dropout uses (exact resume: pegasus_gsg/training/resume.py).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.utils.data
from accelerate import Accelerator

from pegasus_gsg.data.collate import Seq2SeqCollator
from pegasus_gsg.data.sampler import TokenBudgetBatchSampler
from pegasus_gsg.data.vocab import PAD_ID
from pegasus_gsg.training.config import TrainConfig
from pegasus_gsg.training.resume import TrainState

RECORDS = "records"
"""The loader's batch key of the examples' data set indices; `batch_stream` takes it out."""


@runtime_checkable
class TrainData(Protocol):
    """What `train` needs of a training set: examples and their (input + target) lengths."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...

    def lengths(self) -> np.ndarray: ...


@runtime_checkable
class EpochTrainData(TrainData, Protocol):
    """A training set whose examples change from epoch to epoch (GSG pretraining re-draws
    gap sentences), with the exact lengths of each epoch's draw."""

    def epoch_lengths(self, epoch: int) -> np.ndarray: ...

    def set_epoch(self, epoch: int) -> None: ...


def build_loader(
    cfg: TrainConfig, train_set: TrainData, accelerator: Accelerator
) -> tuple[TokenBudgetBatchSampler, torch.utils.data.DataLoader[Any]]:
    """This rank's token-budget batch sampler over `train_set`, and the DataLoader around it.

    Raises:
        ValueError: fewer batches per process than `optim.grad_accum`.
    """
    n = cfg.data.max_samples  # the sampler only ever draws indices < N
    lengths: np.ndarray | Callable[[int], np.ndarray]
    if isinstance(train_set, EpochTrainData):
        # Pretraining: gap sentences (hence input lengths) may be re-drawn every epoch; exact
        # per-epoch lengths keep batches inside the token budget (data/datasets.py, epoch_lengths).
        def lengths(epoch: int) -> np.ndarray:
            return np.asarray(train_set.epoch_lengths(epoch))[:n]
    else:
        lengths = np.asarray(train_set.lengths())[:n]
    sampler = TokenBudgetBatchSampler(
        lengths,
        max_tokens=cfg.data.max_tokens,
        max_batch_size=cfg.data.max_batch_size,
        shuffle=True,
        seed=cfg.seed,
        num_replicas=accelerator.num_processes,
        rank=accelerator.process_index,
        # Every rank must see disjoint examples; repeating batches to even out would not be.
        drop_last=accelerator.num_processes > 1,
    )
    if sampler.batches_per_epoch < cfg.optim.grad_accum:
        raise ValueError(
            f"data.train: {sampler.num_examples} examples give {sampler.batches_per_epoch} "
            "batches per "
            f"process, fewer than optim.grad_accum={cfg.optim.grad_accum}; add data or lower "
            "data.max_tokens"
        )
    loader: torch.utils.data.DataLoader[Any] = torch.utils.data.DataLoader(
        _Numbered(train_set),
        batch_sampler=sampler,
        collate_fn=_CollateWithRecords(PAD_ID),
        num_workers=cfg.data.num_workers,
        pin_memory=torch.cuda.is_available(),
        # Own generator: making an iterator must not draw from the global RNG (exact resume).
        generator=torch.Generator().manual_seed(cfg.seed),
        worker_init_fn=_ignore_sigterm if cfg.data.num_workers > 0 else None,
    )
    return sampler, loader


def _ignore_sigterm(worker_id: int) -> None:
    """DataLoader workers outlive a SIGTERM sent to every process of the job (SLURM does that),
    so that their rank can finish its step and save; the rank shuts them down itself."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class _Numbered(torch.utils.data.Dataset[tuple[int, dict[str, Any]]]):
    """`dataset`'s items paired with their index, for `_CollateWithRecords`."""

    def __init__(self, dataset: TrainData) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, dict[str, Any]]:
        return index, self.dataset[index]


class _CollateWithRecords:
    """Seq2SeqCollator's padded tensors plus `RECORDS`, the items' indices (int64)."""

    def __init__(self, pad_id: int) -> None:
        self.collate = Seq2SeqCollator(pad_id)

    def __call__(self, items: list[tuple[int, dict[str, Any]]]) -> dict[str, torch.Tensor]:
        batch = self.collate([item for _, item in items])
        batch[RECORDS] = torch.tensor([index for index, _ in items], dtype=torch.int64)
        return batch


def batch_stream(
    loader: torch.utils.data.DataLoader[Any],
    sampler: TokenBudgetBatchSampler,
    dataset: TrainData,
    state: TrainState,
) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """(records, micro-batch) forever, epoch after epoch, keeping `state`'s position up to
    date; records are the data set indices of the batch's rows, the batch is the model's
    input."""
    while True:
        sampler.set_epoch(state.epoch, start_batch=state.batch_in_epoch)
        if isinstance(dataset, EpochTrainData):
            dataset.set_epoch(state.epoch)
        for batch in loader:
            state.batch_in_epoch += 1
            records = batch.pop(RECORDS).tolist()
            yield records, batch
        state.epoch += 1
        state.batch_in_epoch = 0

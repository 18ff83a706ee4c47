"""TokenBudgetBatchSampler: coverage, budget, determinism, distributed split, resume."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pegasus_gsg.data.sampler import TokenBudgetBatchSampler
from tests.conftest import read_jsonl_slice


@pytest.fixture(scope="module")
def reuters_lengths() -> np.ndarray:
    """Whitespace word counts of 1500 real Reuters documents, capped like max_input_len."""
    texts = read_jsonl_slice("reuters21578_en", 1500, "text")
    return np.minimum(np.array([len(t.split()) + 1 for t in texts]), 512)


def epoch_batches(sampler: TokenBudgetBatchSampler, epoch: int, start: int = 0) -> list[list]:
    sampler.set_epoch(epoch, start_batch=start)
    return list(sampler)


def test_every_index_once_and_budget_respected(reuters_lengths):
    sampler = TokenBudgetBatchSampler(reuters_lengths, max_tokens=2048, seed=3)
    batches = epoch_batches(sampler, 0)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(reuters_lengths)))
    for b in batches:
        assert len(b) * reuters_lengths[b].max() <= 2048
    assert len(sampler) == len(batches)


def test_max_batch_size_caps_batches(reuters_lengths):
    sampler = TokenBudgetBatchSampler(reuters_lengths, max_tokens=100_000, max_batch_size=7)
    batches = epoch_batches(sampler, 0)
    assert max(len(b) for b in batches) == 7
    assert sorted(i for b in batches for i in b) == list(range(len(reuters_lengths)))


def test_bucketing_pads_far_less_than_random_batches(reuters_lengths):
    def pad_fraction(batches):
        real = sum(int(reuters_lengths[b].sum()) for b in batches)
        padded = sum(len(b) * int(reuters_lengths[b].max()) for b in batches)
        return 1 - real / padded

    bucketed = epoch_batches(TokenBudgetBatchSampler(reuters_lengths, max_tokens=4096), 0)
    # Same budget without sorting: shuffled order, a batch grows while it fits.
    unsorted, batch = [], []
    for i in np.random.default_rng(0).permutation(len(reuters_lengths)):
        if (len(batch) + 1) * max(reuters_lengths[[*batch, i]]) > 4096:
            unsorted.append(batch)
            batch = []
        batch.append(i)
    unsorted.append(batch)
    assert pad_fraction(bucketed) < 0.05
    assert pad_fraction(unsorted) > 4 * pad_fraction(bucketed)


def test_deterministic_per_seed_and_epoch(reuters_lengths):
    a = TokenBudgetBatchSampler(reuters_lengths, max_tokens=2048, seed=5)
    b = TokenBudgetBatchSampler(reuters_lengths, max_tokens=2048, seed=5)
    assert epoch_batches(a, 2) == epoch_batches(b, 2)
    assert epoch_batches(a, 2) != epoch_batches(a, 3)
    other_seed = TokenBudgetBatchSampler(reuters_lengths, max_tokens=2048, seed=6)
    assert epoch_batches(other_seed, 2) != epoch_batches(a, 2)
    # Going back to an earlier epoch reproduces it (nothing depends on call history).
    assert epoch_batches(a, 2) == epoch_batches(b, 2)


def test_no_shuffle_gives_a_fixed_order(reuters_lengths):
    sampler = TokenBudgetBatchSampler(reuters_lengths, max_tokens=2048, shuffle=False)
    first = epoch_batches(sampler, 0)
    assert first == epoch_batches(sampler, 1)
    maxima = [reuters_lengths[b].max() for b in first]
    assert maxima == sorted(maxima, reverse=True)


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_get_equal_counts_and_disjoint_batches(reuters_lengths, world, drop_last):
    single = epoch_batches(TokenBudgetBatchSampler(reuters_lengths, max_tokens=3000, seed=1), 4)
    per_rank = [
        epoch_batches(
            TokenBudgetBatchSampler(
                reuters_lengths,
                max_tokens=3000,
                seed=1,
                num_replicas=world,
                rank=r,
                drop_last=drop_last,
            ),
            4,
        )
        for r in range(world)
    ]
    counts = {len(b) for b in per_rank}
    assert len(counts) == 1, counts
    expected = len(single) // world if drop_last else -(-len(single) // world)
    assert counts == {expected}
    # The ranks split the single-process batch list round robin.
    unique = {tuple(b) for rank in per_rank for b in rank}
    assert unique <= {tuple(b) for b in single}
    total = sum(len(r) for r in per_rank)
    assert len(unique) == min(total, len(single))
    seen = [i for rank in per_rank for b in rank for i in b]
    if drop_last:
        assert len(seen) == len(set(seen))  # disjoint
    else:
        assert set(seen) == set(range(len(reuters_lengths)))  # nothing lost


def test_resume_skips_exactly_the_consumed_batches(reuters_lengths):
    sampler = TokenBudgetBatchSampler(
        reuters_lengths, max_tokens=2048, seed=9, num_replicas=2, rank=1
    )
    full = epoch_batches(sampler, 7)
    resumed = TokenBudgetBatchSampler(
        reuters_lengths, max_tokens=2048, seed=9, num_replicas=2, rank=1
    )
    resumed.set_epoch(7, start_batch=5)
    assert len(resumed) == len(full) - 5
    assert list(resumed) == full[5:]
    assert resumed.batches_per_epoch == len(full)
    resumed.set_epoch(8)  # the skip applies to the resumed epoch only
    assert len(list(resumed)) == resumed.batches_per_epoch


def test_rejects_examples_longer_than_the_budget():
    with pytest.raises(
        ValueError, match=r"max_tokens=100 is smaller than example 2 \(300 tokens\)"
    ):
        TokenBudgetBatchSampler(np.array([10, 20, 300]), max_tokens=100)
    with pytest.raises(ValueError, match="rank must be in"):
        TokenBudgetBatchSampler(np.array([10]), max_tokens=100, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="lengths must be >= 1"):
        TokenBudgetBatchSampler(np.array([10, 0]), max_tokens=100)


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 64), min_size=1, max_size=300),
    max_tokens=st.integers(64, 512),
    window=st.integers(1, 400),
    world=st.integers(1, 4),
    epoch=st.integers(0, 3),
)
def test_property_budget_and_coverage(lengths, max_tokens, window, world, epoch):
    lengths = np.array(lengths)
    samplers = [
        TokenBudgetBatchSampler(
            lengths, max_tokens=max_tokens, window_size=window, num_replicas=world, rank=r
        )
        for r in range(world)
    ]
    per_rank = [epoch_batches(s, epoch) for s in samplers]
    assert len({len(b) for b in per_rank}) == 1
    seen = {i for rank in per_rank for b in rank for i in b}
    assert seen == set(range(len(lengths)))
    for rank in per_rank:
        for b in rank:
            assert b and len(b) * lengths[b].max() <= max_tokens


def test_lengths_function_is_asked_once_per_epoch(reuters_lengths):
    calls = []

    def lengths_of(epoch: int) -> np.ndarray:
        # Lengths that change per epoch, as Mixed & Stochastic examples do.
        return np.maximum(reuters_lengths - 40 * epoch, 1)

    def counted(epoch: int) -> np.ndarray:
        calls.append(epoch)
        return lengths_of(epoch)

    sampler = TokenBudgetBatchSampler(counted, max_tokens=1024, seed=2)
    for epoch in (0, 3):
        batches = epoch_batches(sampler, epoch)
        assert len(sampler) == len(batches)
        assert sorted(i for b in batches for i in b) == list(range(len(reuters_lengths)))
        for b in batches:
            assert len(b) * lengths_of(epoch)[b].max() <= 1024
    assert calls == [0, 3]  # __len__ and __iter__ of one epoch share one call
    fixed = TokenBudgetBatchSampler(np.maximum(reuters_lengths - 120, 1), max_tokens=1024, seed=2)
    assert epoch_batches(sampler, 3) == epoch_batches(fixed, 3)


def test_lengths_function_must_keep_the_example_count():
    sampler = TokenBudgetBatchSampler(lambda epoch: np.ones(5 + epoch), max_tokens=8)
    assert len(epoch_batches(sampler, 0)) == 1
    with pytest.raises(ValueError, match="lengths for epoch 1 has 6 entries, expected 5"):
        epoch_batches(sampler, 1)

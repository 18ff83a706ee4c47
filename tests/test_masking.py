"""Building one pretraining example from token ids (shared/GSG.md §4), with hand-made ids."""

from __future__ import annotations

import numpy as np
import pytest

from pegasus_gsg.data.masking import build_pretraining_example
from pegasus_gsg.data.vocab import EOS_ID, FIRST_PIECE_ID, IGNORE_INDEX, MASK1_ID, MASK2_ID, UNK_ID

VOCAB = 1000
S0, S1, S2, S3 = [200, 201, 202], [300, 301], [400, 401, 402, 403], [500]
DOC = [S0, S1, S2, S3]


def build(sentences=DOC, selected=(1,), seed=0, **kwargs):
    return build_pretraining_example(
        sentences, selected, rng=np.random.default_rng(seed), vocab_size=VOCAB, **kwargs
    )


def test_gap_sentences_become_mask1_and_form_the_target_in_document_order() -> None:
    example = build(selected=[2, 0])
    assert example.input_ids == [MASK1_ID, *S1, MASK1_ID, *S3, EOS_ID]
    assert example.labels == [*S0, *S2, EOS_ID]
    assert example.mlm_labels == [IGNORE_INDEX] * len(example.input_ids)


def test_consecutive_gap_sentences_each_get_their_own_mask() -> None:
    example = build(selected=[1, 2])
    assert example.input_ids == [*S0, MASK1_ID, MASK1_ID, *S3, EOS_ID]
    assert example.labels == [*S1, *S2, EOS_ID]


def test_mask_prob_zero_leaves_the_input_intact_but_keeps_the_target() -> None:
    example = build(selected=[1], mask_prob=0.0)
    assert example.input_ids == [*S0, *S1, *S2, *S3, EOS_ID]
    assert example.labels == [*S1, EOS_ID]


def test_mask_prob_masks_each_gap_sentence_independently() -> None:
    sentences = [[FIRST_PIECE_ID + k] for k in range(20)]
    selected = list(range(0, 20, 2))
    masked = 0
    for seed in range(40):
        example = build(sentences, selected, seed=seed, mask_prob=0.9)
        for i in selected:
            masked += (FIRST_PIECE_ID + i) not in example.input_ids
        assert example.labels == [FIRST_PIECE_ID + i for i in selected] + [EOS_ID]
        assert example.input_ids.count(MASK1_ID) == sum(
            (FIRST_PIECE_ID + i) not in example.input_ids for i in selected
        )
    assert 0.8 < masked / 400 < 0.97


def test_truncation_keeps_eos() -> None:
    example = build(selected=[0, 2], max_input_len=4, max_target_len=3)
    assert example.input_ids == [MASK1_ID, *S1, EOS_ID]
    assert example.labels == [200, 201, EOS_ID]
    assert len(example.mlm_labels) == len(example.input_ids)
    assert build(selected=[0], max_input_len=1, max_target_len=1).input_ids == [EOS_ID]


def test_empty_document() -> None:
    example = build([], [])
    assert (example.input_ids, example.labels, example.mlm_labels) == (
        [EOS_ID],
        [EOS_ID],
        [IGNORE_INDEX],
    )


def test_numpy_store_arrays_give_the_same_example() -> None:
    arrays = [np.asarray(s, dtype=np.uint16) for s in DOC]
    for kwargs in ({}, {"mlm_prob": 0.5}, {"mask_prob": 0.5}):
        assert build(arrays, [0, 3], seed=3, **kwargs) == build(DOC, [0, 3], seed=3, **kwargs)


def test_mlm_picks_only_ordinary_tokens_of_unselected_sentences() -> None:
    rng = np.random.default_rng(0)
    plain = rng.integers(FIRST_PIECE_ID, VOCAB, size=(8, 25)).tolist()
    plain[0][:3] = [UNK_ID, MASK2_ID, 50]  # special ids inside a sentence are never picked
    selected = [2, 5]
    eligible = sum(1 for i, s in enumerate(plain) if i not in selected for t in s if t >= 106)
    kinds = {"mask2": 0, "random": 0, "kept": 0}
    for seed in range(30):
        example = build(plain, selected, seed=seed, mlm_prob=0.15, max_input_len=1000)
        original = []
        for i, s in enumerate(plain):
            original += [MASK1_ID] if i in selected else s
        picked = [k for k, label in enumerate(example.mlm_labels) if label != IGNORE_INDEX]
        assert len(picked) == round(0.15 * eligible)
        gap_positions = {k for k, t in enumerate(original) if t == MASK1_ID}
        for k in picked:
            assert example.mlm_labels[k] == original[k]
            assert original[k] >= FIRST_PIECE_ID and k not in gap_positions
            got = example.input_ids[k]
            if got == MASK2_ID:
                kinds["mask2"] += 1
            elif got == original[k]:
                kinds["kept"] += 1
            else:
                assert FIRST_PIECE_ID <= got < VOCAB
                kinds["random"] += 1
        unpicked = set(range(len(original))) - set(picked)
        assert all(example.input_ids[k] == original[k] for k in unpicked)
    total = sum(kinds.values())
    assert 0.74 < kinds["mask2"] / total < 0.86
    assert 0.05 < kinds["random"] / total < 0.15
    # "kept" includes random draws that hit the original id (about 1 in 900 here).
    assert 0.05 < kinds["kept"] / total < 0.15


def test_mlm_draws_are_reproducible_and_change_with_the_rng() -> None:
    a = build(selected=[1], seed=1, mlm_prob=0.5)
    assert a == build(selected=[1], seed=1, mlm_prob=0.5)
    assert any(build(selected=[1], seed=s, mlm_prob=0.5) != a for s in range(2, 6))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"selected": [4]}, r"in \[0, 4\)"),
        ({"selected": [1, 1]}, "distinct"),
        ({"mask_prob": 1.5}, r"mask_prob must be in \[0, 1\]"),
        ({"mlm_prob": -0.1}, r"mlm_prob must be in \[0, 1\]"),
        ({"max_input_len": 0}, "max_input_len must be >= 1"),
        ({"max_target_len": 0}, "max_target_len must be >= 1"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build(**kwargs)
    with pytest.raises(ValueError, match="vocab_size must be > 106"):
        build_pretraining_example(DOC, [0], rng=np.random.default_rng(0), vocab_size=100)

"""Seq2SeqCollator: dynamic padding, -100 labels, attention mask, mlm_labels."""

from __future__ import annotations

import pytest
import torch

from pegasus_gsg.data.collate import Seq2SeqCollator


def test_pads_to_batch_max_with_mask_and_ignore_index():
    batch = Seq2SeqCollator()(
        [
            {"input_ids": [200, 201, 1], "labels": [300, 1]},
            {"input_ids": [202, 1], "labels": [301, 302, 303, 1]},
        ]
    )
    assert batch["input_ids"].tolist() == [[200, 201, 1], [202, 1, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[300, 1, -100, -100], [301, 302, 303, 1]]
    assert "mlm_labels" not in batch
    assert all(t.dtype == torch.int64 for t in batch.values())


def test_pad_to_multiple_and_custom_pad_id():
    batch = Seq2SeqCollator(pad_id=7, pad_to_multiple_of=4)(
        [{"input_ids": [200, 201, 202, 203, 1], "labels": [1]}]
    )
    assert batch["input_ids"].tolist() == [[200, 201, 202, 203, 1, 7, 7, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[1, -100, -100, -100]]


def test_mlm_labels_follow_the_input_width():
    batch = Seq2SeqCollator()(
        [
            {"input_ids": [3, 201, 1], "labels": [1], "mlm_labels": [250, -100, -100]},
            {"input_ids": [3, 1], "labels": [300, 1], "mlm_labels": [260, -100]},
        ]
    )
    assert batch["mlm_labels"].tolist() == [[250, -100, -100], [260, -100, -100]]
    assert batch["mlm_labels"].shape == batch["input_ids"].shape


def test_bad_batches_are_named():
    collate = Seq2SeqCollator()
    with pytest.raises(ValueError, match="empty batch"):
        collate([])
    with pytest.raises(ValueError, match=r"features \[1\] lack mlm_labels"):
        collate(
            [
                {"input_ids": [1], "labels": [1], "mlm_labels": [-100]},
                {"input_ids": [1], "labels": [1]},
            ]
        )
    with pytest.raises(ValueError, match="feature 0: mlm_labels has 1 entries for 2 input_ids"):
        collate([{"input_ids": [5, 1], "labels": [1], "mlm_labels": [-100]}])
    with pytest.raises(ValueError, match="expected input_ids and labels"):
        collate([{"input_ids": [1]}])

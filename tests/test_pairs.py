"""Pair deduplication across splits (pegasus_gsg/pairs.py), used by the demo and experiments."""

from __future__ import annotations

from pegasus_gsg.data.pairs import dedup_pairs


def _pair(doc: str, split: str | None, summary: str = "s") -> dict:
    record = {"document": doc, "summary": summary}
    if split is not None:
        record["split"] = split
    return record


def test_each_body_once_in_the_first_split_asked_for_and_every_drop_counted():
    records = [
        _pair("shared", "test"),
        _pair("shared ", "dev"),  # `dev` means validation; the same body up to whitespace
        _pair(" shared", "train"),  # train is taken first, so the body stays here
        _pair("v", "valid"),
        _pair("t", "test"),
        _pair("t", "test"),
        _pair("n", None),  # no split field: the default split
        _pair("x", "extra"),
        _pair("x2", "extra"),
        _pair("", "train"),
        _pair("e", "test", summary=" "),
    ]
    pairs = dedup_pairs(records, ("train", "validation", "test"))
    assert {k: [r["document"] for r in v] for k, v in pairs.splits.items()} == {
        "train": [" shared", "n"],
        "validation": ["v"],
        "test": ["t"],
    }
    assert pairs.duplicates == 3  # shared (validation), shared (test), t
    assert pairs.empty == 2
    assert pairs.other_split == {"extra": 2}
    assert pairs.train == pairs.splits["train"] and pairs.test == pairs.splits["test"]


def test_split_order_decides_where_a_shared_body_stays():
    records = [_pair("a", "test"), _pair("a", "train")]
    assert [r["split"] for r in dedup_pairs(records, ("test", "train")).test] == ["test"]
    assert dedup_pairs(records, ("test", "train")).train == []
    only_test = dedup_pairs(records, ("test",), default_split="test")
    assert only_test.other_split == {"train": 1} and len(only_test.test) == 1

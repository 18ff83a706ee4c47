"""Summarization pairs (`document`, `summary`, `split`) deduplicated across splits.

Released datasets repeat documents, within a split and across splits (AESLC: the same email body
in train and test). Each document is kept once, in the first split it is met in, with the
training split taken first, so nothing evaluated was also trained on. The comparison is on the
document with surrounding whitespace stripped. Every record dropped is counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

SPLIT_ALIASES = {"dev": "validation", "val": "validation", "valid": "validation"}
"""Split names that mean `validation`."""


@dataclass
class DedupedPairs:
    splits: dict[str, list[dict[str, Any]]]
    """Split name -> records kept, in input order."""
    duplicates: int = 0
    """Records dropped: their document was already kept (e.g. a test copy of a train one)."""
    empty: int = 0
    """Records dropped for an empty document or summary."""
    other_split: dict[str, int] = field(default_factory=dict)
    """Records of splits not asked for, by split name (not kept, not counted above)."""

    @property
    def train(self) -> list[dict[str, Any]]:
        return self.splits.get("train", [])

    @property
    def test(self) -> list[dict[str, Any]]:
        return self.splits.get("test", [])


def split_of(record: Mapping[str, Any], default: str = "train") -> str:
    """The record's split with aliases resolved (`dev` -> `validation`); `default` if absent."""
    split = record.get("split") or default
    return SPLIT_ALIASES.get(split, split)


def dedup_pairs(
    records: Iterable[Mapping[str, Any]],
    splits: Sequence[str] = ("train", "validation", "test"),
    *,
    default_split: str = "train",
) -> DedupedPairs:
    """Each document once, in the first of `splits` (in that order) that holds it.

    A record without a `split` field belongs to `default_split`.
    """
    named = [(split_of(r, default_split), dict(r)) for r in records]
    result = DedupedPairs({name: [] for name in splits})
    for name, _ in named:
        if name not in result.splits:
            result.other_split[name] = result.other_split.get(name, 0) + 1
    seen: set[str] = set()
    for name in splits:
        kept = result.splits[name]
        for row_split, row in named:
            if row_split != name:
                continue
            body = str(row["document"]).strip()
            if not body or not str(row["summary"]).strip():
                result.empty += 1
            elif body in seen:
                result.duplicates += 1
            else:
                seen.add(body)
                kept.append(row)
    return result

"""Right padding of token-id rows: the one home shared by the collator (training batches),
evaluation and the server (generation inputs).

It sits beside `vocab.py` at the bottom of the library so that serving may use it without
depending on the data pipeline (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def pad_rows(rows: Sequence[Sequence[int]], width: int, value: int) -> torch.Tensor:
    """int64 tensor (len(rows), width): each row on the left, `value` after it."""
    out = np.full((len(rows), width), value, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return torch.from_numpy(out)


def right_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder inputs for generation: `(input_ids, attention_mask)`, padded on the right.

    For an encoder-decoder, right padding under a mask leaves every real position's encoding
    unchanged, so a batched greedy output equals the unbatched one.

    Raises:
        ValueError: no rows, or an empty row.
    """
    if not rows or any(len(row) == 0 for row in rows):
        raise ValueError("right_pad needs at least one row and no empty rows")
    width = max(len(row) for row in rows)
    lengths = torch.tensor([len(row) for row in rows])
    return pad_rows(rows, width, pad_id), (torch.arange(width) < lengths[:, None]).long()

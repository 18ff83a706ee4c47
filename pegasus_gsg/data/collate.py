"""Dynamic padding for seq2seq batches.

Each batch is padded to its own longest sequence (optionally rounded up to a multiple, e.g. 8
for tensor cores), never to the global maximum: with length-bucketed batches (sampler.py) that
leaves a few percent of pad tokens. Labels are padded with -100, the index PyTorch's
cross-entropy ignores, so padding never contributes to the loss; PEGASUS's model turns -100 back
into ``<pad>`` when it shifts labels right into decoder inputs.

Hand-written rather than ``transformers.DataCollatorForSeq2Seq`` because that one needs a
tokenizer object, pads inputs through ``tokenizer.pad`` (which does not pad extra keys such as
``mlm_labels``) and labels through per-row Python lists; this one fills one preallocated NumPy
array per key (benchmarks/bench_loader.py compares the two).
"""

from __future__ import annotations

from typing import Any

import torch

from pegasus_gsg.data.padding import pad_rows
from pegasus_gsg.data.vocab import IGNORE_INDEX, PAD_ID


class Seq2SeqCollator:
    """Turns ``[{"input_ids": [...], "labels": [...], ("mlm_labels": [...])}, ...]`` into tensors.

    Output: ``input_ids`` (padded with ``pad_id``), ``attention_mask`` (1 on real tokens, 0 on
    padding), ``labels`` (padded with -100) and, when the features have them, ``mlm_labels``
    (aligned with ``input_ids``, padded with -100). All int64.
    """

    def __init__(self, pad_id: int = PAD_ID, pad_to_multiple_of: int | None = None) -> None:
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1 or None, got {pad_to_multiple_of}")
        self.pad_id = pad_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def _width(self, longest: int) -> int:
        m = self.pad_to_multiple_of
        return longest if not m else -(-longest // m) * m

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        for i, feature in enumerate(features):
            if "input_ids" not in feature or "labels" not in feature:
                raise ValueError(
                    f"feature {i} has keys {sorted(feature)}; expected input_ids and labels"
                )
        with_mlm = ["mlm_labels" in f for f in features]
        if any(with_mlm) and not all(with_mlm):
            raise ValueError(
                f"features {[i for i, m in enumerate(with_mlm) if not m]} lack mlm_labels "
                "that the others have"
            )
        inputs = [f["input_ids"] for f in features]
        input_width = self._width(max(len(x) for x in inputs))
        input_ids = pad_rows(inputs, input_width, self.pad_id)
        lengths = torch.tensor([len(x) for x in inputs])
        attention_mask = (torch.arange(input_width) < lengths[:, None]).long()
        labels = [f["labels"] for f in features]
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": pad_rows(labels, self._width(max(len(x) for x in labels)), IGNORE_INDEX),
        }
        if with_mlm[0]:
            for i, f in enumerate(features):
                if len(f["mlm_labels"]) != len(f["input_ids"]):
                    raise ValueError(
                        f"feature {i}: mlm_labels has {len(f['mlm_labels'])} entries for "
                        f"{len(f['input_ids'])} input_ids; they must align"
                    )
            mlm = [f["mlm_labels"] for f in features]
            batch["mlm_labels"] = pad_rows(mlm, input_width, IGNORE_INDEX)
        return batch

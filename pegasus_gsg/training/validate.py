"""Validation during training: the mean token loss over the validation set, ROUGE on
generated summaries for its first `eval.generate_samples` examples, and the best model so far.

Every `eval.every` steps (and at the end) the loop calls `validate_and_keep_best`:

    val_loss   every rank scores its own share of the set; the sums are all-reduced
    ROUGE      (with eval.generate_samples > 0) each rank generates for its share, the decoded
               (prediction, reference) pairs are gathered to every rank and scored in order
    one JSON row appended to OUT/eval.jsonl, one log line, `val/*` to the trackers
    best/      when the score beats the best so far (ROUGE-Lsum when generating, else minus the
               loss), the model is exported to OUT/best with its `eval.json`, built in staging
               and swapped in whole (pegasus_gsg/files.py), so a kill never leaves it partial
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.data
from accelerate import Accelerator
from accelerate.utils import gather_object

from pegasus_gsg.data.collate import Seq2SeqCollator
from pegasus_gsg.data.sampler import TokenBudgetBatchSampler
from pegasus_gsg.data.vocab import IGNORE_INDEX, PAD_ID
from pegasus_gsg.evaluation.rouge import generate, rouge_report
from pegasus_gsg.training import checkpoint as ckpt
from pegasus_gsg.training.batches import TrainData
from pegasus_gsg.training.config import TrainConfig
from pegasus_gsg.training.model import Seq2SeqLossModel, export_whole, generation_config
from pegasus_gsg.training.resume import TrainState

logger = logging.getLogger(__name__)


def validate_and_keep_best(
    model: Seq2SeqLossModel,
    tokenizer: Any,
    val_set: TrainData,
    cfg: TrainConfig,
    accelerator: Accelerator,
    state: TrainState,
    eval_file: Path,
    best_dir: Path,
) -> dict[str, float]:
    """Validation loss (+ ROUGE with `eval.generate_samples`), logged and appended to
    `eval_file`; a new best (ROUGE-Lsum when generating, else minus the loss) is exported to
    `best_dir` (with its `eval.json`)."""
    result: dict[str, float] = {
        "step": state.step,
        "val_loss": validation_loss(model, val_set, cfg, accelerator),
    }
    if cfg.eval.generate_samples:
        result.update(validation_rouge(model, tokenizer, val_set, cfg, accelerator))
    # Higher is better: ROUGE-Lsum when generating, else minus the loss.
    metric = result.get("rougeLsum", -result["val_loss"])
    state.history.append(result)
    if accelerator.is_main_process:
        ckpt.append_line(eval_file, result)
    accelerator.log({f"val/{k}": v for k, v in result.items() if k != "step"}, step=state.step)
    logger.info(
        "eval step %d | %s",
        state.step,
        " | ".join(f"{k} {v:.4g}" for k, v in result.items() if k != "step"),
    )
    if state.best_metric is None or metric > state.best_metric:
        state.best_metric = metric
        if accelerator.is_main_process:
            eval_json = {"eval.json": json.dumps(result, indent=2)}
            export_whole(
                model.model, tokenizer, best_dir, generation_config(cfg.eval), ckpt.RESUME_HINT,
                extra_files=eval_json,
            )  # fmt: skip
    return result


@torch.no_grad()
def validation_loss(
    model: Seq2SeqLossModel,
    dataset: TrainData,
    cfg: TrainConfig,
    accelerator: Accelerator,
) -> float:
    """Mean target-token loss over the whole validation set (each rank scores its own share)."""
    model.eval()
    shard = _shard(len(dataset), accelerator)
    sums = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    if shard:
        subset: torch.utils.data.Subset[Any] = torch.utils.data.Subset(
            dataset,  # type: ignore[arg-type]  # map-style by the TrainData protocol
            shard,
        )
        sampler = TokenBudgetBatchSampler(
            np.asarray(dataset.lengths())[shard],
            max_tokens=cfg.data.max_tokens,
            max_batch_size=cfg.data.max_batch_size,
            shuffle=False,
        )
        loader: torch.utils.data.DataLoader[Any] = torch.utils.data.DataLoader(
            subset, batch_sampler=sampler, collate_fn=Seq2SeqCollator(PAD_ID)
        )
        for batch in loader:
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            with accelerator.autocast():
                losses = model(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    labels=batch["labels"],
                )
            sums[0] += losses["labels"].double()
            sums[1] += (batch["labels"] != IGNORE_INDEX).sum()
    sums = accelerator.reduce(sums, reduction="sum")
    model.train()
    return float(sums[0] / sums[1].clamp(min=1))


@torch.no_grad()
def validation_rouge(
    model: Seq2SeqLossModel,
    tokenizer: Any,
    dataset: TrainData,
    cfg: TrainConfig,
    accelerator: Accelerator,
) -> dict[str, float]:
    """Generate for the first `eval.generate_samples` validation examples; ROUGE vs labels."""
    model.eval()
    n = min(cfg.eval.generate_samples, len(dataset))
    shard = _shard(n, accelerator)
    items = [dataset[i] for i in shard]
    predictions = generate(
        model.model,
        [it["input_ids"] for it in items],
        generation_config(cfg.eval),
        max_tokens=cfg.data.max_tokens,
        device=accelerator.device,
    )
    local = [
        (
            i,
            tokenizer.decode(p, skip_special_tokens=True),
            tokenizer.decode(it["labels"], skip_special_tokens=True),
        )
        for i, p, it in zip(shard, predictions, items, strict=True)
    ]
    rows = sorted(gather_object(local))
    model.train()
    report = rouge_report([r[1] for r in rows], [r[2] for r in rows], bootstrap_samples=0)
    return {name: score.mid for name, score in report.items()}


def _shard(n: int, accelerator: Accelerator) -> list[int]:
    return list(range(accelerator.process_index, n, accelerator.num_processes))

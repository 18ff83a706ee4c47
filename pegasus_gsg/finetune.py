"""Fine-tuning on (document, summary) pairs: `accelerate launch -m pegasus_gsg.finetune
--config configs/tiny_finetune.yaml --init-from PRETRAINED_DIR --train STORE --validation STORE
--out DIR` (plain `python -m` runs one process).

The data are `finetune` stores (`pegasus-gsg prepare finetune`). The weights come from
`--init-from` (our pretraining output's `model/`, or any local HF PEGASUS directory) or, without
it, a new model of the configured shape. Validation loss, and with `eval.generate_samples > 0`
generation + ROUGE, run every `eval.every` steps; the best model is kept in `OUT/best`.
The loop is pegasus_gsg.training.loop, the same as pretraining.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pegasus_gsg.data.datasets import FinetuneDataset
from pegasus_gsg.training.entry import (
    exit_process,
    load_run_tokenizer,
    open_store,
    parse_run_args,
    run_cli,
)
from pegasus_gsg.training.loop import TrainResult, train
from pegasus_gsg.training.model import Seq2SeqLossModel, build_model, check_vocab


def main(argv: Sequence[str] | None = None) -> TrainResult:
    run = parse_run_args(argv, "pegasus_gsg.finetune", "Fine-tune a PEGASUS model.")
    cfg = run.config
    tokenizer = load_run_tokenizer(cfg)
    d = cfg.data
    lengths = dict(max_input_len=d.max_input_len, max_target_len=d.max_target_len)
    train_set = FinetuneDataset(open_store(d.train, tokenizer, "data.train", "finetune"), **lengths)
    val_set = None
    if d.validation is not None:
        val_set = FinetuneDataset(
            open_store(d.validation, tokenizer, "data.validation", "finetune"), **lengths
        )
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, len(tokenizer))
    check_vocab(model, len(tokenizer), str(d.tokenizer or cfg.model.init_from))
    wrapped = Seq2SeqLossModel(model, label_smoothing=cfg.optim.label_smoothing)
    return train(
        cfg,
        model=wrapped,
        tokenizer=tokenizer,
        train_set=train_set,
        val_set=val_set,
        resume=run.resume,
        profile=run.profile,
    )


if __name__ == "__main__":
    exit_process(run_cli(main, "pegasus_gsg.finetune"))

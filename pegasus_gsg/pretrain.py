"""GSG pretraining: `accelerate launch -m pegasus_gsg.pretrain --config configs/tiny.yaml
--train STORE --tokenizer DIR --out DIR` (plain `python -m` runs one process).

The data is a `pretrain` store (`pegasus-gsg prepare pretrain`); examples are built at batch
time from the stored rankings (gsr, mask_prob, MLM per data.*). With `data.mlm_prob > 0` the
model gets the encoder MLM head of GSG.md §4 for training only.
The loop is pegasus_gsg.training.loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pegasus_gsg.data.datasets import PretrainingDataset
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
    run = parse_run_args(argv, "pegasus_gsg.pretrain", "GSG pretraining of a PEGASUS model.")
    cfg = run.config
    tokenizer = load_run_tokenizer(cfg)
    d = cfg.data  # a DataConfig is the ExampleOptions of the run
    train_set = PretrainingDataset(
        open_store(d.train, tokenizer, "data.train", "pretrain"),
        d,
        vocab_size=len(tokenizer),
        seed=cfg.seed,
    )
    val_set = None
    if d.validation is not None:
        val_store = open_store(d.validation, tokenizer, "data.validation", "pretrain")
        val_set = PretrainingDataset(val_store, d, vocab_size=len(tokenizer), seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, len(tokenizer))
    check_vocab(model, len(tokenizer), str(d.tokenizer or cfg.model.init_from))
    wrapped = Seq2SeqLossModel(
        model, label_smoothing=cfg.optim.label_smoothing, mlm_head=d.mlm_prob > 0
    )
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
    exit_process(run_cli(main, "pegasus_gsg.pretrain"))

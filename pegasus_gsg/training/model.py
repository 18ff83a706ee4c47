"""Build the PEGASUS model, wrap it with the training losses, and export the plain class.

`build_model` returns a `transformers.PegasusForConditionalGeneration`, new from a shape
(`ModelConfig`, e.g. the paper's BASE/LARGE presets) or loaded from any local HF PEGASUS
directory (`model.init_from`: a downloaded `google/pegasus-large`, or our own pretraining output).

`Seq2SeqLossModel` is what the training loop optimises. Its forward returns *sums* of token
losses (one per label tensor in the batch), never means: the loop divides by the number of real
target tokens in the whole accumulation window across all processes, so a micro-batch with few
targets weighs no more than its tokens. It also projects to the vocabulary only at positions that
have a label, which skips the pad positions a plain `model(labels=...)` call spends a full
`d_model x vocab` matmul on.

Pretraining with MLM (GSG.md §4, the PEGASUS-BASE setting) adds `EncoderMLMHead`: a BERT-style
transform (dense, GELU, LayerNorm) on the encoder output, decoded with the *shared input
embeddings* (tied, plus a bias) at the `mlm_labels` positions. It exists only in the training
wrapper; `export` saves `wrapper.model`, a plain `PegasusForConditionalGeneration`.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    GenerationConfig,
    PegasusConfig,
    PegasusForConditionalGeneration,
    PreTrainedTokenizerBase,
)
from transformers.models.pegasus.modeling_pegasus import shift_tokens_right

from pegasus_gsg import files
from pegasus_gsg.data.vocab import EOS_ID, IGNORE_INDEX, PAD_ID
from pegasus_gsg.training.config import EvalConfig, ModelConfig

logger = logging.getLogger(__name__)


def build_model(cfg: ModelConfig, vocab_size: int) -> PegasusForConditionalGeneration:
    """A new model of `cfg`'s shape for `vocab_size` ids, or the one in `cfg.init_from`.

    Raises:
        FileNotFoundError: `init_from` is not a directory with a `config.json`.
        ValueError: `init_from` is not a PEGASUS checkpoint.
    """
    if cfg.init_from is not None:
        path = Path(cfg.init_from)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model.init_from={path}: not a model directory (no config.json); expected a "
                "save_pretrained PEGASUS directory"
            )
        config = PegasusConfig.from_pretrained(path)
        if config.model_type != "pegasus":
            raise ValueError(
                f"model.init_from={path}: model_type {config.model_type!r}, expected 'pegasus'"
            )
        config.dropout = cfg.dropout
        config.attention_dropout = cfg.attention_dropout
        return PegasusForConditionalGeneration.from_pretrained(path, config=config)
    config = PegasusConfig(
        vocab_size=vocab_size,
        d_model=cfg.d_model,
        encoder_layers=cfg.encoder_layers,
        decoder_layers=cfg.decoder_layers,
        encoder_attention_heads=cfg.attention_heads,
        decoder_attention_heads=cfg.attention_heads,
        encoder_ffn_dim=cfg.ffn_dim,
        decoder_ffn_dim=cfg.ffn_dim,
        max_position_embeddings=cfg.max_position_embeddings,
        dropout=cfg.dropout,
        attention_dropout=cfg.attention_dropout,
        activation_function="relu",
        scale_embedding=True,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=PAD_ID,
        forced_eos_token_id=EOS_ID,
    )
    return PegasusForConditionalGeneration(config)


def check_vocab(
    model: PegasusForConditionalGeneration, vocab_size: int, source: str | None
) -> None:
    """Refuse a tokenizer whose ids the model's embedding cannot hold (or vice versa).

    Raises:
        ValueError: the sizes differ.
    """
    rows = cast(nn.Embedding, model.get_input_embeddings()).num_embeddings
    if rows != vocab_size:
        raise ValueError(
            f"vocab/model mismatch: the tokenizer {source} has {vocab_size} ids but the model's "
            f"embedding has {rows} rows; use the tokenizer the model was trained with"
        )


class EncoderMLMHead(nn.Module):
    """BERT-style masked-token head on the encoder output, decoding with tied embeddings."""

    def __init__(self, d_model: int, vocab_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: torch.Tensor, embedding_weight: torch.Tensor) -> torch.Tensor:
        # The embedding matrix is passed in rather than held, so that the state dict has no
        # second name for the shared tensor (checkpoints would store or reject it).
        hidden = self.norm(F.gelu(self.dense(hidden)))
        return F.linear(hidden, embedding_weight, self.bias)


class Seq2SeqLossModel(nn.Module):
    """`PegasusForConditionalGeneration` plus token-summed losses (and the optional MLM head).

    forward(input_ids, attention_mask, labels[, mlm_labels]) -> {"labels": sum, "mlm_labels": sum}
    where each sum is over the positions whose label is not -100.
    """

    def __init__(
        self,
        model: PegasusForConditionalGeneration,
        *,
        label_smoothing: float = 0.0,
        mlm_head: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.label_smoothing = label_smoothing
        self.mlm_head = (
            EncoderMLMHead(model.config.d_model, model.config.vocab_size) if mlm_head else None
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        mlm_labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        config = self.model.config
        pad, start = config.pad_token_id, config.decoder_start_token_id
        if pad is None or start is None:
            raise ValueError("the model config needs pad_token_id and decoder_start_token_id")
        decoder_input_ids = shift_tokens_right(labels, pad, start)
        out = self.model.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            use_cache=False,
        )
        targets = labels != IGNORE_INDEX
        logits = self.model.lm_head(out.last_hidden_state[targets]) + self.model.final_logits_bias
        losses = {
            "labels": F.cross_entropy(
                logits.float().view(-1, logits.shape[-1]),
                labels[targets],
                reduction="sum",
                label_smoothing=self.label_smoothing,
            )
        }
        if self.mlm_head is not None and mlm_labels is not None:
            picked = mlm_labels != IGNORE_INDEX
            mlm_logits = self.mlm_head(
                out.encoder_last_hidden_state[picked], self.model.get_input_embeddings().weight
            )
            losses["mlm_labels"] = F.cross_entropy(
                mlm_logits.float(), mlm_labels[picked], reduction="sum"
            )
        return losses


def generation_config(cfg: EvalConfig) -> GenerationConfig:
    """What `generate` does by default for the exported model (beam size, lengths)."""
    return GenerationConfig(
        num_beams=cfg.num_beams,
        max_new_tokens=cfg.max_new_tokens,
        length_penalty=cfg.length_penalty,
        early_stopping=cfg.num_beams > 1,
        decoder_start_token_id=PAD_ID,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        forced_eos_token_id=EOS_ID,
    )


def export(
    model: PegasusForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    gen: GenerationConfig,
) -> Path:
    """`save_pretrained` model + tokenizer + generation config, loadable with the Auto classes."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config = gen
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    logger.info("exported model to %s", out)
    return out


def export_whole(
    model: PegasusForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    final_dir: Path,
    gen: GenerationConfig,
    hint: str,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """`export` (plus `extra_files`, name -> text) into a staging directory beside
    `final_dir`, then swap it in whole (pegasus_gsg/files.py): a kill or a full disk never
    leaves a partial `final_dir`.

    Raises:
        DiskFullError: a full disk, naming `final_dir`, the weights' size and `hint`; the
            staging directory is removed and the previous `final_dir` kept.
    """
    staging = files.fresh_staging_dir(final_dir)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    try:
        with files.writing_to(final_dir, weight_bytes, hint):
            export(model, tokenizer, staging, gen)
            for name, text in (extra_files or {}).items():
                (staging / name).write_text(text, encoding="utf-8")
            files.replace_dir(staging, final_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when swapped in
    return final_dir

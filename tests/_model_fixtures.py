"""Build small random-weight PEGASUS model directories for server tests and benchmarks.

The directory is what `save_pretrained` writes for a real checkpoint (config, weights,
tokenizer, generation config), so the server loads it exactly as it would load a trained one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    PegasusConfig,
    PegasusForConditionalGeneration,
)

from pegasus_gsg.data.vocab import EOS_ID, PAD_ID


def build_model_dir(
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    *,
    d_model: int = 32,
    layers: int = 1,
    heads: int = 2,
    ffn_dim: int = 64,
    max_position_embeddings: int = 256,
    max_new_tokens: int = 12,
    init_std: float = 0.5,
    seed: int = 0,
    eos_bias: float = 0.0,
    forced_eos: bool = False,
    **generation: object,
) -> Path:
    """Save a random-weight PegasusForConditionalGeneration with the tokenizer in `out_dir`.

    `init_std` is large on purpose: with the usual 0.02 a random decoder ignores its input and
    every text gets the same summary, which would hide a batching bug that mixes up rows; at
    0.5 nearly every input gets its own output. `eos_bias` is added to `</s>`'s logit (through
    `final_logits_bias`) so that summaries end at varied lengths, as a trained model's do;
    `forced_eos` sets `forced_eos_token_id` as exported trained models have it; `generation`
    adds GenerationConfig fields (e.g. early_stopping=True, as exported models have).
    """
    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = PegasusConfig(
        vocab_size=len(tokenizer),
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=ffn_dim,
        decoder_ffn_dim=ffn_dim,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=PAD_ID,
        forced_eos_token_id=None,
        init_std=init_std,
    )
    model = PegasusForConditionalGeneration(config).eval()
    if eos_bias:
        model.final_logits_bias[0, EOS_ID] = eos_bias
    model.generation_config = GenerationConfig(
        decoder_start_token_id=PAD_ID,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        max_new_tokens=max_new_tokens,
        forced_eos_token_id=EOS_ID if forced_eos else None,
        **{"num_beams": 1, **generation},
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir

"""The serving benchmark's inputs and FLOP count (benchmarks/bench_server.py), without servers.

Its table states the input length of every figure, and its encoder FLOP/s divide by a hand
formula: both must be what they claim. The cases are cut from real documents by token offsets;
re-tokenized, a `full` case's texts must be exactly their stated length (the server counts
`</s>` too), and the formula must equal what torch counts in a real PEGASUS encoder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoTokenizer, PegasusConfig, PegasusModel

from tests.conftest import load_benchmark

REPO = Path(__file__).resolve().parents[1]


def _bench():
    return load_benchmark("bench_server")


def test_encoder_flops_equal_torchs_count_of_a_pegasus_encoder():
    d_model, layers, tokens = 64, 2, 48
    config = PegasusConfig(
        vocab_size=100, d_model=d_model, encoder_layers=layers, decoder_layers=1,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=4 * d_model,
        decoder_ffn_dim=4 * d_model, max_position_embeddings=64, attn_implementation="eager",
    )  # fmt: skip
    encoder = PegasusModel(config).get_encoder().eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        encoder(input_ids=torch.randint(3, 100, (1, tokens)))
    assert counter.get_total_flops() == _bench().encoder_flops(d_model, layers, tokens)
    # the 512-token figure the docs divide by
    assert _bench().encoder_flops(512, 6, 512) == pytest.approx(22.55e9, rel=1e-3)


def test_cases_are_cut_to_their_stated_token_lengths(real_text_tokenizer_dir):
    bench = _bench()
    args = argparse.Namespace(
        data=REPO.parent / "shared" / "data", requests=12, cases=["long32", "short", "mixed"]
    )
    cases = bench.load_cases(args, real_text_tokenizer_dir)
    tokenizer = AutoTokenizer.from_pretrained(real_text_tokenizer_dir)
    lengths = {
        name: [len(tokenizer(text)["input_ids"]) for text in texts] for name, texts in cases.items()
    }
    assert all(len(texts) == 12 for texts in cases.values())
    assert set(lengths["long32"]) == {512}, "a full case: every input exactly 512 with </s>"
    assert max(lengths["short"]) <= 256 and min(lengths["short"]) < 200  # natural, cut at 256
    # mixed: every article in order, whatever its length, cut at 512
    articles = bench.read_field(args.data / "bbc_news_summary" / "data.jsonl", "document", 12)
    assert all(a.startswith(t) for a, t in zip(articles, cases["mixed"], strict=True))
    assert max(lengths["mixed"]) <= 512
    assert len(set(cases["long32"])) == 12


def test_quick_mode_and_variants_shape_the_run():
    bench = _bench()
    variant = "int8-w=--backend ctranslate2 --compute-type int8 --length-window 0"
    args = bench.parse_args(["--quick", "--variant", variant])
    assert args.cases == ["encode", "short", "long32"] and args.modes == ["greedy"]
    assert (args.requests, args.concurrency) == (8, [8])
    assert args.backends[-1] == "int8-w"
    assert bench.BACKEND_ARGS["int8-w"][-2:] == ["--length-window", "0"]
    assert (args.max_input_tokens, args.max_new_tokens) == (512, 32)
    custom = bench.parse_args(["--max-new-tokens", "64"])
    assert custom.cases == ["custom"] and bench.CASES["custom"].new_tokens == 64
    with pytest.raises(SystemExit):
        bench.parse_args(["--variant", "no-equals-sign"])

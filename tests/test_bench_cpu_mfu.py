"""The MFU benchmark's FLOP counting (benchmarks/bench_cpu_mfu.py), against hand counts.

A matmul of (m x k) by (k x n) is 2mkn FLOPs; a linear layer's backward is two such matmuls
(grad input, grad weight), so a training step of one linear layer is 3x its forward. CPU SDPA,
which transformers uses by default, has no formula in torch's FlopCounterMode: without the
benchmark's own formula attention would count 0, and the model's FLOPs would be those of its
eager twin minus every attention matmul.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from tests.conftest import load_benchmark

REPO = Path(__file__).resolve().parents[1]


def _bench():
    return load_benchmark("bench_cpu_mfu")


def test_linear_step_counts_forward_and_both_backward_matmuls():
    bench = _bench()
    n, d_in, d_out = 5, 7, 3
    layer = torch.nn.Linear(d_in, d_out)
    x = torch.randn(n, d_in, requires_grad=True)
    forward = 2 * n * d_in * d_out
    assert bench.count_flops(lambda: layer(x)) == forward
    # grad input (n x d_out @ d_out x d_in) + grad weight (d_out x n @ n x d_in)
    assert bench.count_flops(lambda: layer(x).sum().backward()) == 3 * forward
    # an input without grad: the weight gradient only
    assert bench.count_flops(lambda: layer(x.detach()).sum().backward()) == 2 * forward


def test_batched_matmul_and_cpu_sdpa_are_counted():
    bench = _bench()
    b, h, s, d = 2, 3, 4, 8
    q, k, v = (torch.randn(b, h, s, d) for _ in range(3))
    qk_then_av = 2 * (2 * b * h * s * s * d)
    assert bench.count_flops(lambda: q @ k.transpose(-1, -2)) == qk_then_av // 2
    sdpa = torch.nn.functional.scaled_dot_product_attention
    assert bench.count_flops(lambda: sdpa(q, k, v)) == qk_then_av


def test_pegasus_step_counts_the_same_with_sdpa_and_eager_attention():
    bench = _bench()
    from pegasus_gsg.training.config import ModelConfig
    from pegasus_gsg.training.model import Seq2SeqLossModel, build_model

    cfg = ModelConfig(
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        attention_heads=2,
        ffn_dim=32,
        max_position_embeddings=32,
        dropout=0.0,
        attention_dropout=0.0,
    )
    torch.manual_seed(0)
    batch = {
        "input_ids": torch.randint(3, 50, (2, 10)),
        "attention_mask": torch.ones(2, 10, dtype=torch.long),
        "labels": torch.randint(3, 50, (2, 6)),
    }
    counts = {}
    for attn in ("sdpa", "eager"):
        model = build_model(cfg, 50)
        model.set_attn_implementation(attn)
        counts[attn] = bench.step_flops(Seq2SeqLossModel(model), batch)
    model = build_model(cfg, 50)
    model.set_attn_implementation("eager")
    with FlopCounterMode(display=False) as counter:
        Seq2SeqLossModel(model)(**batch)["labels"].backward()
    eager_matmuls = (
        counter.get_total_flops() - counter.get_flop_counts()["Global"][torch.ops.aten.bmm]
    )
    # attention in the encoder self, decoder self and cross layers (queries x keys):
    # QK^T and PV of 2 sequences x 2 heads x head_dim 8, forward + backward (2x forward)
    attention = sum(3 * 2 * (2 * 2 * 2 * s_q * s_k * 8) for s_q, s_k in ((10, 10), (6, 6), (6, 10)))
    assert counts["eager"] == counts["sdpa"] == eager_matmuls + attention

"""bf16 training throughput and model FLOPs utilisation (MFU) of the PEGASUS-BASE shape on a GPU.

Prepared for a lent GPU machine (the `device` tool): one short run, no data or tokenizer needed.
It times `--steps` optimizer steps of the training wrapper the loop uses (Seq2SeqLossModel: loss
only at target positions; fused AdamW; bf16 autocast; TF32 on) on random token batches of the
paper's pretraining lengths (512 in / 256 out), after `--warmup` untimed steps, and prints
tokens/s and MFU.

FLOPs per step (the usual 6N rule, plus attention): 6 x (matmul parameters) per token for
forward + backward, where the encoder's tokens pass the encoder layers, the decoder's pass the
decoder layers and the vocabulary projection; plus 12 x layers x seq x d_model per token for
the attention score and value matmuls (self- and cross-attention). Peak: `--peak-tflops`
(H100 SXM dense bf16: 989).

    python benchmarks/bench_train_gpu.py [--preset base] [--batch 16] [--steps 20]
    python benchmarks/bench_train_gpu.py --preset tiny --device cpu --batch 2 --steps 2  # smoke
"""

from __future__ import annotations

import argparse
import time

import torch

from pegasus_gsg.data.vocab import FIRST_PIECE_ID
from pegasus_gsg.training.config import MODEL_PRESETS, ModelConfig
from pegasus_gsg.training.model import Seq2SeqLossModel, build_model


def step_flops(cfg: ModelConfig, vocab: int, batch: int, src: int, tgt: int) -> float:
    d, f = cfg.d_model, cfg.ffn_dim
    enc_layer = 4 * d * d + 2 * d * f  # q k v o + two FFN matrices
    dec_layer = 8 * d * d + 2 * d * f  # self + cross attention + FFN
    dense = batch * (
        src * cfg.encoder_layers * enc_layer + tgt * (cfg.decoder_layers * dec_layer + d * vocab)
    )
    attention = batch * (
        cfg.encoder_layers * src * src * d + cfg.decoder_layers * (tgt * tgt * d + tgt * src * d)
    )
    return 6.0 * dense + 12.0 * attention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="base", choices=sorted(MODEL_PRESETS))
    parser.add_argument("--vocab", type=int, default=96103)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--src", type=int, default=512)
    parser.add_argument("--tgt", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    cfg = ModelConfig(**MODEL_PRESETS[args.preset], dropout=0.1, attention_dropout=0.1)
    torch.manual_seed(0)
    model = Seq2SeqLossModel(build_model(cfg, args.vocab)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    inputs = torch.randint(FIRST_PIECE_ID, args.vocab, (args.batch, args.src), device=device)
    labels = torch.randint(FIRST_PIECE_ID, args.vocab, (args.batch, args.tgt), device=device)
    mask = torch.ones_like(inputs)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype == torch.bfloat16):
            loss = model(input_ids=inputs, attention_mask=mask, labels=labels)["labels"]
        (loss / labels.numel()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = (time.perf_counter() - t0) / args.steps
    tokens = args.batch * (args.src + args.tgt)
    flops = step_flops(cfg, args.vocab, args.batch, args.src, args.tgt)
    params = sum(p.numel() for p in model.parameters())
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(
        f"{args.preset} ({params / 1e6:.0f}M params) on {name}, {dtype}, batch {args.batch} "
        f"x {args.src}/{args.tgt} tokens"
    )
    tflops = flops / elapsed / 1e12
    print(
        f"step {elapsed * 1000:.1f} ms | {tokens / elapsed:,.0f} tok/s | {tflops:.1f} TFLOP/s | "
        f"MFU {tflops / args.peak_tflops:.1%} of {args.peak_tflops:.0f} TFLOP/s"
    )
    if device.type == "cuda":
        print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()

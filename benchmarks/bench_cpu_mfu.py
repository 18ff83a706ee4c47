"""Model FLOP utilisation (MFU) of the training step on this CPU, where the rest goes, and what
the candidate speed-ups buy, measured side by side in one run.

1. Peak: this machine's fp32 GEMM rate, a large square `torch.mm` (2 n^3 FLOPs) on 1 and 2
   torch threads, median of repeats measured between the timed steps (a peak measured once at
   the start, under another load, gave an "MFU" of 129%). MFU below is achieved model FLOP/s
   over the peak measured at the same thread count.
2. Model FLOPs: counted exactly for each timed batch with `torch.utils.flop_counter`
   (forward + backward of the real step: `Seq2SeqLossModel`, so the output projection runs only
   at label positions). FlopCounterMode counts matmuls (mm/addmm/bmm and attention); it has no
   formula for the CPU SDPA kernel (`_scaled_dot_product_flash_attention_for_cpu`, which
   transformers uses by default), so `count_flops` adds one (forward: torch's SDPA formula;
   backward: 2x forward, as eager attention counts, without the flash kernel's recompute):
   without it attention would silently count 0. Element-wise ops, layer norm, softmax and the
   optimizer are not counted (the usual MFU convention); padded positions are (they run).
3. Shapes: DialogSum (configs/dialogsum_finetune.yaml: d_model 256, 4+4 layers, 8,000-id
   vocabulary, lengths 384/96, 4,096-token batches) and the demo's fine-tuning stage
   (configs/demo_finetune.yaml: the tiny preset, 4,000 ids, lengths 256/32, 4,096-token
   batches). Batches are real: DialogSum train pairs, a tokenizer trained on them
   (pegasus_gsg.data.tokenization), a `pegasus-gsg prepare finetune` store, and the loop's own
   sampler and DataLoader (training/batches.py build_loader + batch_stream). The model is
   `training.model.build_model` + `Seq2SeqLossModel`, the optimizer `training.loop
   .build_optimizer` (fused AdamW on CPU); a step is the loop's (loss = token sum / targets,
   backward, grad clip, optimizer step, zero_grad; one process, no accumulation).
4. Profile: a few steps of today's configuration under torch.profiler, the time of aten ops
   (self time) grouped: matmul/linear, attention/softmax, layer norm, embedding/output
   projection + loss (ops on a vocabulary-sized tensor), other ops (dropout, activations,
   residual adds, copies), optimizer step (+ grad clip); data loading wait (wall time of the
   loader); Python/framework overhead = wall time of forward+backward+optimizer minus their op
   time. The profiler adds its own overhead, so read the shares, not the absolute ms.
5. Variants (`--variants`, each against `today`, the loop as the demo and the DialogSum study
   run it: transformers' default SDPA attention, fused AdamW, ONE torch thread per process
   (demo --threads 1, the study's OMP_NUM_THREADS=1 lanes), the config's token budget, no
   compile). Every variant trains its own copy of the model from the same initial weights on
   the same batches (its budget's batches for budget_*); the variants alternate within each
   repeat so a noisy neighbour hits all of them alike; medians of `--repeats`. Library defaults
   are untouched: the variants set things on their own model/optimizer/thread count.

Shared machines: the load average is printed next to the results; compare the ratios of one
run, not absolute rates between runs. Two MFU columns: per wall second (MFU: achieved / GEMM
peak per wall second, both under whatever load there was) and per CPU second of this process
(MFU(cpu): FLOPs / CPU s over the GEMM's FLOPs / CPU s), the one that survives a noisy
neighbour; for 2 threads it also charges the second thread's spin-waiting. On the 2-core
development machine at load average 3-4 (2026-12-03): the default run took 647 s (compile
114 s + 69 s of it), `--quick` (1 step per window, no torch.compile) 134 s.

    .venv/bin/python benchmarks/bench_cpu_mfu.py [--quick] [--variants today,eager,...]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from _helpers_train import SHARED_DATA, prepare_store, write_jsonl  # noqa: E402

from pegasus_gsg.data.vocab import IGNORE_INDEX  # noqa: E402
from pegasus_gsg.training.config import TrainConfig, load_config  # noqa: E402
from pegasus_gsg.training.loop import build_optimizer  # noqa: E402
from pegasus_gsg.training.model import Seq2SeqLossModel, build_model  # noqa: E402

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Shape:
    """A model shape as a project recipe trains it."""

    name: str
    config: str
    vocab_size: int
    overrides: tuple[str, ...] = ()


SHAPES = {
    "dialogsum": Shape("dialogsum", "configs/dialogsum_finetune.yaml", 8000),
    # The demo adds its lengths and positions on top of the shipped config (demo.py).
    "demo": Shape(
        "demo",
        "configs/demo_finetune.yaml",
        4000,
        (
            "data.max_input_len=256",
            "data.max_target_len=32",
            "model.max_position_embeddings=256",
        ),
    ),
}


@dataclass(frozen=True)
class Variant:
    """One candidate configuration, described by how it differs from today's."""

    name: str
    what: str
    attn: str = "sdpa"
    optimizer: str = "fused"  # "fused" = build_optimizer as the loop calls it; "foreach"
    threads: int = 1
    budget_scale: float = 1.0
    compile: bool = False


VARIANTS = {
    v.name: v
    for v in (
        Variant("today", "SDPA (transformers default), fused AdamW, 1 thread, config budget"),
        Variant("eager", "eager attention (attn_implementation='eager')", attn="eager"),
        Variant("foreach", "AdamW foreach instead of fused", optimizer="foreach"),
        Variant("threads2", "1 process x 2 torch threads", threads=2),
        Variant("budget_half", "token budget / 2", budget_scale=0.5),
        Variant("budget_double", "token budget x 2", budget_scale=2.0),
        Variant(
            "compile", "torch.compile(model, dynamic=True), as compile=true does", compile=True
        ),
    )
}
DEFAULT_VARIANTS = "today,eager,foreach,threads2,budget_half,budget_double,compile"
QUICK_VARIANTS = "today,eager,foreach,threads2,budget_double"


# --- FLOP counting -----------------------------------------------------------------------------


def _cpu_sdpa_flops(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    return int(sdpa_flop_count(query, key, value))


def _cpu_sdpa_backward_flops(
    grad_out: Any, query: Any, key: Any, value: Any, *args: Any, **kwargs: Any
) -> int:
    # Model FLOPs: the gradients of QK^T and of PV (4 matmuls, 2x forward), as eager attention
    # counts them; torch's sdpa_backward_flop_count adds the kernel's recompute of QK^T.
    return 2 * int(sdpa_flop_count(query, key, value))


CPU_SDPA_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
}
"""FlopCounterMode's missing formulas for the CPU SDPA kernel (forward, backward): the same
model FLOPs as eager attention's two matmuls and their gradients (no flash recompute)."""


def count_flops(run: Callable[[], object]) -> int:
    """FLOPs of the matmuls (incl. attention, CPU SDPA too) that `run()` executes."""
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FORMULAS) as counter:
        run()
    return int(counter.get_total_flops())


def step_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """The loop's loss for a one-micro-batch window: token-summed loss / real targets."""
    sums = model(**batch)
    keys = sorted(k for k in batch if k.endswith("labels"))
    total: torch.Tensor = sum(
        (sums[k] / (batch[k] != IGNORE_INDEX).sum().clamp(min=1) for k in keys),
        torch.zeros(()),
    )
    return total


def step_flops(model: torch.nn.Module, batch: Batch) -> int:
    """Model FLOPs of one training step on `batch` (forward + backward), gradients cleared."""
    flops = count_flops(lambda: step_loss(model, batch).backward())
    model.zero_grad(set_to_none=True)
    return flops


def batch_tokens(batch: Batch) -> int:
    """Tokens the loop counts for its tok/s: non-pad input tokens + target tokens."""
    return int(batch["attention_mask"].sum()) + int((batch["labels"] != IGNORE_INDEX).sum())


# --- peak ----------------------------------------------------------------------------------


def gemm_peak(threads: int, n: int, repeats: int) -> tuple[float, float]:
    """Median FLOP/s of an n x n fp32 torch.mm on `threads` threads: per wall second, and per
    CPU second of this process (all its threads; what a busy machine leaves to it)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up: allocations, thread pool
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        torch.mm(a, b)
        wall.append(2 * n**3 / (time.perf_counter() - t0))
        cpu.append(2 * n**3 / max(time.process_time() - c0, 1e-9))
    torch.set_num_threads(1)
    return statistics.median(wall), statistics.median(cpu)


# --- setup: data, config, model ------------------------------------------------------------


def dialogsum_pairs(limit: int) -> list[dict[str, str]]:
    path = SHARED_DATA / "dialogsum" / "data.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no DialogSum data (expected ../shared/data/dialogsum)")
    pairs = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if record["split"] == "train":
                pairs.append({"document": record["document"], "summary": record["summary"]})
                if len(pairs) >= limit:
                    break
    return pairs


@dataclass
class Setup:
    """One shape, ready to train: its config, data set and initial weights."""

    shape: Shape
    cfg: TrainConfig
    dataset: Any
    vocab_size: int
    init_state: dict[str, torch.Tensor]


def make_setup(shape: Shape, pairs: list[dict[str, str]], tmp: Path) -> Setup:
    from pegasus_gsg.data.datasets import FinetuneDataset
    from pegasus_gsg.data.store import TokenStore
    from pegasus_gsg.data.tokenization import train_tokenizer

    cfg = load_config(REPO / shape.config, [*shape.overrides, f"out_dir={tmp / 'unused'}"])
    tokenizer_dir = tmp / f"tokenizer_{shape.name}"
    tokenizer = train_tokenizer(
        [p["document"] for p in pairs] + [p["summary"] for p in pairs],
        vocab_size=shape.vocab_size,
        out_dir=tokenizer_dir,
    )
    jsonl = write_jsonl(tmp / "pairs.jsonl", pairs)
    store = prepare_store("finetune", jsonl, tokenizer_dir, tmp / f"store_{shape.name}")
    dataset = FinetuneDataset(
        TokenStore.open(store),
        max_input_len=cfg.data.max_input_len,
        max_target_len=cfg.data.max_target_len,
    )
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, len(tokenizer))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return Setup(shape, cfg, dataset, len(tokenizer), state)


def batches(setup: Setup, budget: int) -> Iterator[Batch]:
    """The loop's batch stream (sampler + DataLoader + epochs) at token budget `budget`."""
    from accelerate import Accelerator

    from pegasus_gsg.training.batches import batch_stream, build_loader
    from pegasus_gsg.training.resume import TrainState

    cfg = load_config(
        REPO / setup.shape.config,
        [*setup.shape.overrides, f"out_dir={setup.cfg.out_dir}", f"data.max_tokens={budget}"],
    )
    sampler, loader = build_loader(cfg, setup.dataset, Accelerator(cpu=True))
    return batch_stream(loader, sampler, setup.dataset, TrainState())


def make_model(setup: Setup, attn: str) -> Seq2SeqLossModel:
    model = build_model(setup.cfg.model, setup.vocab_size)
    model.load_state_dict(setup.init_state)
    model.set_attn_implementation(attn)
    wrapped = Seq2SeqLossModel(model, label_smoothing=setup.cfg.optim.label_smoothing)
    wrapped.train()
    return wrapped


def make_optimizer(model: torch.nn.Module, setup: Setup, kind: str) -> torch.optim.Optimizer:
    optimizer = build_optimizer(model, setup.cfg.optim)
    if kind == "fused":
        return optimizer
    groups = [
        {k: v for k, v in g.items() if k not in ("fused", "foreach")}
        for g in optimizer.param_groups
    ]
    return torch.optim.AdamW(groups, foreach=True)


# --- one training step, as the loop takes it ------------------------------------------------


class Trainer:
    """A model + optimizer (one variant) taking the loop's steps."""

    def __init__(self, setup: Setup, variant: Variant) -> None:
        self.variant = variant
        self.model = make_model(setup, variant.attn)
        self.optimizer = make_optimizer(self.model, setup, variant.optimizer)
        self.grad_clip = setup.cfg.optim.grad_clip
        self.forward: torch.nn.Module = (
            torch.compile(self.model, dynamic=True) if variant.compile else self.model
        )

    def step(self, batch: Batch) -> None:
        loss = step_loss(self.forward, batch)
        loss.backward()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def run(self, window: list[Batch]) -> tuple[float, float]:
        """(wall s, CPU s) of one step per batch of `window`."""
        torch.set_num_threads(self.variant.threads)
        try:
            t0, c0 = time.perf_counter(), time.process_time()
            for batch in window:
                self.step(batch)
            return time.perf_counter() - t0, time.process_time() - c0
        finally:
            torch.set_num_threads(1)


# --- profile -------------------------------------------------------------------------------

GROUPS = (
    "matmul/linear",
    "attention/softmax",
    "layer norm",
    "embedding/output proj + loss",
    "other ops (dropout, act., adds, copies)",
    "optimizer step + grad clip",
    "data loading wait",
    "Python/framework overhead",
)
_MATMUL = {"aten::mm", "aten::addmm", "aten::linear", "aten::matmul"}
_ATTENTION = {"aten::bmm", "aten::baddbmm", "aten::_softmax", "aten::softmax"}
_LAYER_NORM = {"aten::native_layer_norm", "aten::layer_norm", "aten::native_layer_norm_backward"}
_LOSS = {
    "aten::embedding",
    "aten::embedding_dense_backward",
    "aten::embedding_backward",
    "aten::cross_entropy_loss",
    "aten::nll_loss_forward",
    "aten::nll_loss_backward",
    "aten::_log_softmax",
    "aten::_log_softmax_backward_data",
    "aten::index",
    "aten::index_put_",
    "aten::nonzero",
}


def op_group(name: str, shapes: list[Any], vocab_size: int) -> str:
    """The profile group of an aten op (forward/backward phases) by name and input shapes."""
    if name in _LOSS or any(
        isinstance(s, list) and vocab_size in s[-2:] for s in shapes if s is not None
    ):
        return GROUPS[3]
    if name in _MATMUL:
        return GROUPS[0]
    if name in _ATTENTION or "softmax" in name or "scaled_dot_product" in name:
        return GROUPS[1]
    if name in _LAYER_NORM:
        return GROUPS[2]
    return GROUPS[4]


def _phase(event: Any) -> str | None:
    while event is not None:
        if event.name.startswith("bench."):
            return str(event.name)
        event = event.cpu_parent
    return None


def profile(setup: Setup, steps: int) -> tuple[dict[str, float], float, dict[str, float]]:
    """Per-step ms by group of `steps` steps of today's configuration (after 1 warm-up), the
    measured wall ms per step, and per-step ms of the ops in the "other ops" group by name."""
    from torch.autograd.profiler import record_function

    trainer = Trainer(setup, VARIANTS["today"])
    stream = batches(setup, setup.cfg.data.max_tokens)
    trainer.step(next(stream))
    wall = {"data": 0.0, "compute": 0.0}
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True
    ) as prof:
        for _ in range(steps):
            t0 = time.perf_counter()
            with record_function("bench.data"):
                batch = next(stream)
            t1 = time.perf_counter()
            with record_function("bench.forward"):
                loss = step_loss(trainer.model, batch)
            with record_function("bench.backward"):
                loss.backward()
            with record_function("bench.optimizer"):
                torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.grad_clip)
                trainer.optimizer.step()
                trainer.optimizer.zero_grad(set_to_none=True)
            t2 = time.perf_counter()
            wall["data"] += t1 - t0
            wall["compute"] += t2 - t1
    ms = dict.fromkeys(GROUPS, 0.0)
    other: dict[str, float] = {}
    op_total = 0.0
    for event in prof.events():
        if not event.name.startswith("aten::"):
            continue
        phase = _phase(event)
        if phase not in ("bench.forward", "bench.backward", "bench.optimizer"):
            continue
        self_ms = event.self_cpu_time_total / 1e3
        op_total += self_ms
        if phase == "bench.optimizer":
            ms[GROUPS[5]] += self_ms
        else:
            group = op_group(event.name, event.input_shapes or [], setup.vocab_size)
            ms[group] += self_ms
            if group == GROUPS[4]:
                other[event.name] = other.get(event.name, 0.0) + self_ms / steps
    ms[GROUPS[6]] = 1e3 * wall["data"]
    ms[GROUPS[7]] = max(0.0, 1e3 * wall["compute"] - op_total)
    per_step = {k: v / steps for k, v in ms.items()}
    return per_step, 1e3 * (wall["data"] + wall["compute"]) / steps, other


# --- the run -------------------------------------------------------------------------------


@dataclass
class Window:
    batches: list[Batch]
    tokens: int
    flops: int


def make_window(setup: Setup, budget: int, steps: int) -> Window:
    stream = batches(setup, budget)
    window = [next(stream) for _ in range(steps)]
    counter = make_model(setup, "sdpa")
    flops = sum(step_flops(counter, b) for b in window)
    return Window(window, sum(batch_tokens(b) for b in window), flops)


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def bench_shape(
    setup: Setup,
    variants: list[Variant],
    args: argparse.Namespace,
) -> None:
    cfg = setup.cfg
    params = sum(p.numel() for p in make_model(setup, "sdpa").parameters())
    print(
        f"\n=== {setup.shape.name}: {setup.shape.config} {' '.join(setup.shape.overrides)}\n"
        f"d_model {cfg.model.d_model}, {cfg.model.encoder_layers}+{cfg.model.decoder_layers} "
        f"layers, FFN {cfg.model.ffn_dim}, vocab {setup.vocab_size}, {params / 1e6:.2f}M params, "
        f"lengths {cfg.data.max_input_len}/{cfg.data.max_target_len}, "
        f"budget {cfg.data.max_tokens} tokens",
        flush=True,
    )

    windows: dict[int, Window] = {}
    for v in variants:
        budget = round(cfg.data.max_tokens * v.budget_scale)
        if budget not in windows:
            windows[budget] = make_window(setup, budget, args.steps)
            w = windows[budget]
            shapes = sorted(
                {tuple(b["input_ids"].shape) + tuple(b["labels"].shape) for b in w.batches}
            )
            print(
                f"budget {budget}: {args.steps} batches, {w.tokens / args.steps:.0f} tokens and "
                f"{w.flops / args.steps / 1e9:.2f} GFLOP (fwd+bwd) per step; "
                f"(B, S_in, B, S_tgt) {shapes}",
                flush=True,
            )

    trainers = {}
    for v in variants:
        w = windows[round(cfg.data.max_tokens * v.budget_scale)]
        trainer = Trainer(setup, v)
        torch.set_num_threads(v.threads)
        t0 = time.perf_counter()
        # Warm-up: compile needs every batch shape once; the others one step.
        trainer.run(w.batches if v.compile else w.batches[:1])
        if v.compile:
            print(
                f"compile: first pass over {len(w.batches)} batches "
                f"{time.perf_counter() - t0:.1f}s (compile time: once per run and new shape)",
                flush=True,
            )
        trainers[v.name] = trainer

    results: dict[str, list[tuple[float, float]]] = {v.name: [] for v in variants}
    peaks: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
    for r in range(args.repeats):
        # The peak is measured between the steps, so that it sees the same load they do.
        for t in peaks:
            peaks[t].append(gemm_peak(t, args.gemm_n, repeats=3))
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for v in order:
            w = windows[round(cfg.data.max_tokens * v.budget_scale)]
            results[v.name].append(trainers[v.name].run(w.batches))
    peak = {
        t: (statistics.median(w for w, _ in p), statistics.median(c for _, c in p))
        for t, p in peaks.items()
    }
    print(load_average())
    print(
        f"fp32 GEMM peak ({args.gemm_n}^3 torch.mm, median of {args.repeats} x 3 between the "
        "steps), GFLOP per wall s / per CPU s: "
        + ", ".join(
            f"{t} thread{'s' * (t > 1)} {w / 1e9:.1f} / {c / 1e9:.1f}" for t, (w, c) in peak.items()
        )
    )
    print(
        f"{'variant':<15}{'tok/s':>8}{'GFLOP/s':>9}{'MFU':>7}{'vs today':>10}"
        f"{'CPU s/step':>12}{'MFU(cpu)':>10}  what (median of {args.repeats} x {args.steps} steps)"
    )
    base = None
    for v in variants:
        w = windows[round(cfg.data.max_tokens * v.budget_scale)]
        wall = statistics.median(x[0] for x in results[v.name])
        cpu = statistics.median(x[1] for x in results[v.name])
        tok_s = w.tokens / wall
        gflop_s = w.flops / wall / 1e9
        if base is None:
            base = tok_s
        print(
            f"{v.name:<15}{tok_s:>8.0f}{gflop_s:>9.2f}{gflop_s * 1e9 / peak[v.threads][0]:>7.1%}"
            f"{tok_s / base:>9.2f}x{cpu / args.steps:>12.2f}"
            f"{w.flops / cpu / peak[v.threads][1]:>10.1%}  {v.what}",
            flush=True,
        )

    per_step, wall_ms, other = profile(setup, args.profile_steps)
    print(
        f"profile of today's step ({args.profile_steps} steps under torch.profiler, "
        f"{wall_ms:.0f} ms/step with profiler overhead):"
    )
    for group in GROUPS:
        print(f"  {group:<42}{per_step[group]:>9.1f} ms {per_step[group] / wall_ms:>6.1%}")
    top = sorted(other.items(), key=lambda kv: -kv[1])[:6]
    print("  of the other ops: " + ", ".join(f"{name[6:]} {t:.1f} ms" for name, t in top))
    print(load_average())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="~2 minutes: fewer steps, no compile")
    parser.add_argument("--variants", help=f"comma-separated, from {','.join(VARIANTS)}")
    parser.add_argument("--shapes", default="dialogsum,demo", help="dialogsum,demo")
    parser.add_argument("--steps", type=int, help="batches per timed window (default 2; quick 1)")
    parser.add_argument("--repeats", type=int, help="timed windows per variant (default 3)")
    parser.add_argument("--profile-steps", type=int, help="profiled steps (default 2)")
    parser.add_argument("--pairs", type=int, default=2000, help="DialogSum train pairs to use")
    parser.add_argument("--gemm-n", type=int, default=2048)
    args = parser.parse_args()
    args.steps = args.steps or (1 if args.quick else 2)
    args.repeats = args.repeats or 3
    args.profile_steps = args.profile_steps or 2
    names = (args.variants or (QUICK_VARIANTS if args.quick else DEFAULT_VARIANTS)).split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        parser.error(f"--variants: unknown {unknown}; choose from {','.join(VARIANTS)}")
    if "today" not in names:
        names.insert(0, "today")
    names.remove("today")
    variants = [VARIANTS["today"], *(VARIANTS[n] for n in names)]
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("pegasus_gsg", "accelerate", "transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()
    print(f"torch {torch.__version__}, {load_average()}", flush=True)

    pairs = dialogsum_pairs(args.pairs)
    with tempfile.TemporaryDirectory() as tmp_name:
        for name in args.shapes.split(","):
            if name not in SHAPES:
                parser.error(f"--shapes: unknown {name!r}; choose from {','.join(SHAPES)}")
            t0 = time.perf_counter()
            setup = make_setup(SHAPES[name], pairs, Path(tmp_name) / name)
            print(
                f"\n{name}: tokenizer + store of {len(pairs)} DialogSum train pairs "
                f"{time.perf_counter() - t0:.1f}s",
                flush=True,
            )
            bench_shape(setup, variants, args)
    print(f"\ntotal {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()

"""The training loop shared by pretraining and fine-tuning (they differ in data and weights only).

Read `train` top to bottom; it is a plain PyTorch loop around an `accelerate.Accelerator`:

    set up the Accelerator (bf16 on CUDA, fp32 on CPU; fp16 refused) and seeds
    batches:    token-budget, length-bucketed batches from the store, sharded by rank by the
                sampler itself (so the DataLoader is NOT passed to accelerator.prepare, which
                would shard it a second time); batches are moved to the device here
    model, optimizer = accelerator.prepare(...)   # DDP on many processes
    optional --resume: refuse a checkpoint of another config, then load_state
    loop over optimizer steps:
        take the next `grad_accum` micro-batches (the window), time the wait for them
        count real target tokens in the window, all-reduced over processes
        for each micro-batch, inside accelerator.accumulate(model):
            per-token loss sums come out of the model (computed on every rank, never gathered)
            loss = sum / tokens-in-window (x processes x grad_accum, which DDP averaging and
                   accelerator.backward divide out again) -> the gradient of the mean token loss
            clip, optimizer.step, scheduler.step, zero_grad   (acting only when sync_gradients)
        every log_every: `step 120/10000 | loss 3.41 | lr 2.9e-4 | 41k tok/s | data wait 3%`
        every eval.every: validation loss (+ generation and ROUGE; the best model is exported),
                          one JSON row appended to OUT/eval.jsonl
        every save_every: a checkpoint (complete or absent, see pegasus_gsg/checkpoint.py),
                          keeping the newest `keep`
        on SIGTERM (all ranks agree at the next step): a checkpoint, then stop
    export the final model with save_pretrained (+ tokenizer + GenerationConfig)

Why normalise over the window: with token-budget batches the number of targets per micro-batch
varies a lot; averaging per micro-batch then averaging those would weight a batch of three long
summaries like one of forty short ones. Sum over tokens / tokens in the window is the true mean.

Exact resume: a checkpoint holds model, optimizer, scheduler, RNG states (accelerate) and the
`TrainState` (step, epoch, batches consumed this epoch). The sampler's order is a pure function
of (seed, epoch), so `set_epoch(epoch, start_batch=k)` gives the same next batch; the DataLoader
gets its own torch.Generator so creating iterators never draws from the global RNG that dropout
uses. The resumed run therefore reproduces the uninterrupted run's losses.

Killed at any instant: every file the run writes is complete or absent (checkpoints, the
exported `model/` and `best/`, `train_state.json`), and `--resume latest` takes the newest complete
checkpoint and cuts `metrics.jsonl`/`eval.jsonl` back to its step, so the resumed run's rows
follow on without a duplicate or a gap (pegasus_gsg/checkpoint.py has the rules).

SIGTERM (what SLURM and Kubernetes send before SIGKILL) does not kill the run: the step in
progress finishes, a checkpoint is saved, and `train` returns with `stopped_by_signal` set (the
entry points then exit with status 143); at most one step, one validation and one checkpoint
after the signal. Resume with `--resume latest`.

Only the main process writes files, except the per-rank RNG state files that
`accelerator.save_state` writes into each checkpoint (`random_states_<rank>.pkl`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.utils.data
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import get_scheduler
from transformers.optimization import Adafactor

from pegasus_gsg.data.collate import Seq2SeqCollator
from pegasus_gsg.data.sampler import TokenBudgetBatchSampler
from pegasus_gsg.data.vocab import IGNORE_INDEX, PAD_ID
from pegasus_gsg.evaluation.rouge import generate, rouge_report
from pegasus_gsg.training import checkpoint as ckpt
from pegasus_gsg.training.checkpoint import RUN_CONFIG_FILE
from pegasus_gsg.training.config import OptimConfig, TrainConfig, describe_difference
from pegasus_gsg.training.model import Seq2SeqLossModel, export, generation_config

logger = logging.getLogger(__name__)

EXIT_STOPPED_BY_SIGNAL = 128 + signal.SIGTERM
"""Exit status of an entry point whose run stopped on SIGTERM after saving a checkpoint."""


@runtime_checkable
class TrainData(Protocol):
    """What `train` needs of a training set: examples and their (input + target) lengths."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...

    def lengths(self) -> np.ndarray: ...


@runtime_checkable
class EpochTrainData(TrainData, Protocol):
    """A training set whose examples change from epoch to epoch (GSG pretraining re-draws
    gap sentences), with the exact lengths of each epoch's draw."""

    def epoch_lengths(self, epoch: int) -> np.ndarray: ...

    def set_epoch(self, epoch: int) -> None: ...


@dataclass
class TrainState:
    """Run state saved in every checkpoint (never in the config)."""

    step: int = 0
    """Optimizer steps taken."""
    epoch: int = 0
    batch_in_epoch: int = 0
    """Micro-batches this rank consumed in `epoch` (the same number on every rank)."""
    best_metric: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    """Validation results so far."""

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


@dataclass
class TrainResult:
    model: Any
    """The trained `PegasusForConditionalGeneration` (unwrapped)."""
    state: TrainState
    out_dir: Path
    model_dir: Path
    """The exported final model (save_pretrained)."""
    best_dir: Path | None
    stopped_by_signal: bool = False
    """True when SIGTERM stopped the run early (after a checkpoint; `model_dir` not written)."""


def check_precision(cfg: TrainConfig) -> str:
    """Accelerate's mixed_precision value for `cfg`, refusing fp16 from any source.

    Raises:
        ValueError: fp16 asked for through `accelerate launch --mixed_precision fp16`/env, or
            bf16 asked for on a machine without bf16 support.
    """
    if os.environ.get("ACCELERATE_MIXED_PRECISION", "no") == "fp16":
        raise ValueError(
            "mixed precision fp16 (from accelerate launch / ACCELERATE_MIXED_PRECISION) is "
            "refused: PEGASUS activations overflow float16 and the loss turns NaN; use bf16"
        )
    if cfg.precision == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    if cfg.precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ValueError("precision=bf16 but this GPU does not support bfloat16; use fp32")
    return "bf16" if cfg.precision == "bf16" else "no"


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW (fused kernel where torch has one, else foreach) or the paper's Adafactor.

    Weight decay applies to matrices only (not biases, LayerNorm scales or the logits bias).
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.name == "adafactor":
        return Adafactor(
            groups,
            lr=cfg.lr,
            scale_parameter=False,
            relative_step=False,
            warmup_init=False,
            clip_threshold=1.0,
        )
    try:
        return torch.optim.AdamW(
            groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=True
        )
    except (RuntimeError, TypeError):  # no fused kernel for this device/dtype
        return torch.optim.AdamW(
            groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, foreach=True
        )


def _lr_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, max_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    name = {"constant": "constant_with_warmup"}.get(cfg.schedule.decay, cfg.schedule.decay)
    scheduler: torch.optim.lr_scheduler.LRScheduler = get_scheduler(
        name, optimizer, num_warmup_steps=cfg.schedule.warmup_steps, num_training_steps=max_steps
    )
    return scheduler


def find_checkpoint(resume: str, out_dir: Path) -> Path | None:
    """`latest` -> newest complete checkpoint under out_dir/checkpoints (None if there is none;
    partial ones, left by a kill during a save, are named in a warning and stepped over).

    Raises:
        FileNotFoundError: an explicit checkpoint path that does not exist.
    """
    if resume != "latest":
        path = Path(resume)
        if not path.is_dir():
            raise FileNotFoundError(f"--resume {path}: no such checkpoint directory")
        return path
    return ckpt.latest_checkpoint(out_dir / "checkpoints")


def refuse_earlier_run(out_dir: Path) -> None:
    """A fresh run (no --resume) must not start in a directory that holds another run: its
    rows would be appended to the old run's logs, and a later `--resume latest` would pick
    the old run's newer checkpoint.

    Raises:
        ValueError: out_dir has complete checkpoints or logged rows; says what to do instead.
    """
    found = [c.name for c in ckpt.complete_checkpoints(out_dir / "checkpoints", warn=False)]
    found += [
        name
        for name in ("metrics.jsonl", "eval.jsonl")
        if (out_dir / name).is_file() and (out_dir / name).stat().st_size > 0
    ]
    if found:
        raise ValueError(
            f"--out {out_dir} already holds a run ({', '.join(found)}): continue it with "
            "--resume latest, or start afresh in a new --out (or delete this one)"
        )


def check_resume_config(checkpoint: Path, cfg: TrainConfig) -> None:
    """Refuse a checkpoint written under a different training configuration.

    Raises:
        ValueError: no run config in the checkpoint, or fields that differ (named).
    """
    saved_file = checkpoint / RUN_CONFIG_FILE
    if not saved_file.is_file():
        raise ValueError(
            f"--resume {checkpoint}: no {RUN_CONFIG_FILE}; not a checkpoint of this trainer"
        )
    saved = json.loads(saved_file.read_text())
    current = cfg.fingerprint_dict()
    if saved != current:
        raise ValueError(
            f"--resume {checkpoint}: the checkpoint was written with a different config "
            f"({describe_difference(saved, current)}); resume with the same settings or start "
            "a new run"
        )


def _batch_stream(
    loader: torch.utils.data.DataLoader[Any],
    sampler: TokenBudgetBatchSampler,
    dataset: TrainData,
    state: TrainState,
) -> Iterator[dict[str, torch.Tensor]]:
    """Micro-batches forever, epoch after epoch, keeping `state`'s position up to date."""
    while True:
        sampler.set_epoch(state.epoch, start_batch=state.batch_in_epoch)
        if isinstance(dataset, EpochTrainData):
            dataset.set_epoch(state.epoch)
        for batch in loader:
            state.batch_in_epoch += 1
            yield batch
        state.epoch += 1
        state.batch_in_epoch = 0


def _label_keys(batch: dict[str, torch.Tensor]) -> list[str]:
    return sorted(k for k in batch if k.endswith("labels"))


def _fmt_count(x: float) -> str:
    return f"{x / 1e6:.1f}M" if x >= 1e6 else f"{x / 1e3:.0f}k" if x >= 1e3 else f"{x:.0f}"


def _shard(n: int, accelerator: Accelerator) -> list[int]:
    return list(range(accelerator.process_index, n, accelerator.num_processes))


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


def build_loader(
    cfg: TrainConfig, train_set: TrainData, accelerator: Accelerator
) -> tuple[TokenBudgetBatchSampler, torch.utils.data.DataLoader[Any]]:
    """This rank's token-budget batch sampler over `train_set`, and the DataLoader around it.

    Raises:
        ValueError: fewer batches per process than `optim.grad_accum`.
    """
    n = cfg.data.max_samples  # the sampler only ever draws indices < N
    lengths: np.ndarray | Callable[[int], np.ndarray]
    if isinstance(train_set, EpochTrainData):
        # Pretraining: gap sentences (hence input lengths) may be re-drawn every epoch; exact
        # per-epoch lengths keep batches inside the token budget (data.py, epoch_lengths).
        def lengths(epoch: int) -> np.ndarray:
            return np.asarray(train_set.epoch_lengths(epoch))[:n]
    else:
        lengths = np.asarray(train_set.lengths())[:n]
    sampler = TokenBudgetBatchSampler(
        lengths,
        max_tokens=cfg.data.max_tokens,
        max_batch_size=cfg.data.max_batch_size,
        shuffle=True,
        seed=cfg.seed,
        num_replicas=accelerator.num_processes,
        rank=accelerator.process_index,
        # Every rank must see disjoint examples; repeating batches to even out would not be.
        drop_last=accelerator.num_processes > 1,
    )
    if sampler.batches_per_epoch < cfg.optim.grad_accum:
        raise ValueError(
            f"data.train: {sampler.num_examples} examples give {sampler.batches_per_epoch} "
            "batches per "
            f"process, fewer than optim.grad_accum={cfg.optim.grad_accum}; add data or lower "
            "data.max_tokens"
        )
    loader: torch.utils.data.DataLoader[Any] = torch.utils.data.DataLoader(
        train_set,  # type: ignore[arg-type]  # a map-style dataset by the TrainData protocol
        batch_sampler=sampler,
        collate_fn=Seq2SeqCollator(PAD_ID),
        num_workers=cfg.data.num_workers,
        pin_memory=torch.cuda.is_available(),
        # Own generator: making an iterator must not draw from the global RNG (exact resume).
        generator=torch.Generator().manual_seed(cfg.seed),
        worker_init_fn=_ignore_sigterm if cfg.data.num_workers > 0 else None,
    )
    return sampler, loader


def _ignore_sigterm(worker_id: int) -> None:
    """DataLoader workers outlive a SIGTERM sent to every process of the job (SLURM does that),
    so that their rank can finish its step and save; the rank shuts them down itself."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def train(
    cfg: TrainConfig,
    *,
    model: Seq2SeqLossModel,
    tokenizer: Any,
    train_set: TrainData,
    val_set: TrainData | None = None,
    resume: str | None = None,
    profile: bool = False,
) -> TrainResult:
    """Train `model` on `train_set` as `cfg` says; see the module docstring for the loop.

    Raises:
        ValueError: fp16, a resume checkpoint of another config, a data set that yields no
            batch, all before the first step.
    """
    # --- setup -------------------------------------------------------------------------------
    mixed_precision = check_precision(cfg)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 matmuls on Ampere+ GPUs
        torch.backends.cudnn.allow_tf32 = True
    out_dir = Path(cfg.out_dir)
    accelerator = Accelerator(
        # Without cpu=True accelerate treats `accelerate launch --multi_gpu` on a GPU-less
        # machine as N independent single processes; with it, N gloo processes (MULTI_CPU).
        cpu=not torch.cuda.is_available(),
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=cfg.optim.grad_accum,
        log_with=None if cfg.checkpoint.log_with == "none" else cfg.checkpoint.log_with,
        project_dir=str(out_dir),
        step_scheduler_with_optimizer=False,
    )
    set_seed(cfg.seed, device_specific=True)  # different dropout per rank, same every run
    checkpoint = find_checkpoint(resume, out_dir) if resume else None
    if checkpoint is not None:
        check_resume_config(checkpoint, cfg)
    elif resume:
        logger.info("--resume latest: no checkpoint under %s yet; starting from step 0", out_dir)
    else:
        refuse_earlier_run(out_dir)
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        with ckpt.atomic_file(out_dir / "config.yaml") as tmp:
            cfg.save(tmp)

    sampler, loader = build_loader(cfg, train_set, accelerator)
    epochs = cfg.schedule.epochs or 1  # the config sets exactly one of max_steps and epochs
    max_steps = cfg.schedule.max_steps or max(
        1, epochs * sampler.batches_per_epoch // cfg.optim.grad_accum
    )

    if cfg.compile:
        model = torch.compile(model, dynamic=True)  # type: ignore[assignment]
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = _lr_scheduler(optimizer, cfg, max_steps)
    # The scheduler is deliberately not prepared: accelerate would step it once per process.
    model, optimizer = accelerator.prepare(model, optimizer)
    state = TrainState()
    accelerator.register_for_checkpointing(scheduler, state)
    metrics_file = out_dir / "metrics.jsonl"  # one row per log interval
    eval_file = out_dir / "eval.jsonl"  # one row per validation
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        logger.info(
            "resumed from %s at step %d (epoch %d, batch %d)",
            checkpoint,
            state.step,
            state.epoch,
            state.batch_in_epoch,
        )
    if resume and accelerator.is_main_process:
        # Rows the killed run wrote after its checkpoint are written again from here.
        for log in (metrics_file, eval_file):
            ckpt.truncate_log(log, state.step)
    if cfg.checkpoint.log_with != "none":  # trackers live on the main process only
        hparams = {
            k: v if isinstance(v, (int, float, str, bool)) else str(v)
            for k, v in cfg.fingerprint_dict().items()
        }
        accelerator.init_trackers("tensorboard", config=hparams)

    unwrapped: Seq2SeqLossModel = accelerator.unwrap_model(model)
    gen = generation_config(cfg.eval)
    best_dir = out_dir / "best" if val_set is not None else None
    batches = _batch_stream(loader, sampler, train_set, state)
    profiler = _profiler(out_dir) if profile and accelerator.is_main_process else None
    saved_step = state.step if checkpoint is not None else None

    # --- loop --------------------------------------------------------------------------------
    model.train()
    interval = _Interval(accelerator.device)
    # With a wall-clock budget the bar counts the budget's seconds: a step count would be an
    # upper bound that the run never reaches.
    budget_s = None if cfg.schedule.max_minutes is None else 60 * cfg.schedule.max_minutes
    progress = tqdm(
        total=max_steps if budget_s is None else round(budget_s),
        initial=state.step if budget_s is None else 0,
        desc="train",
        unit="step" if budget_s is None else "s",
        disable=not accelerator.is_local_main_process,
    )
    stop = _StopOnSigterm()
    with logging_redirect_tqdm(), profiler or contextlib.nullcontext(), stop:
        started = time.monotonic()
        deadline = started + (budget_s if budget_s is not None else math.inf)
        at_end = state.step >= max_steps
        while not at_end:
            if stop.agreed(accelerator):
                break
            t0 = time.perf_counter()
            window = [next(batches) for _ in range(cfg.optim.grad_accum)]
            interval.data_wait += time.perf_counter() - t0

            keys = _label_keys(window[0])
            local_counts = torch.tensor(
                [sum(int((b[k] != IGNORE_INDEX).sum()) for b in window) for k in keys],
                dtype=torch.float64,
                device=accelerator.device,
            )
            counts = accelerator.reduce(local_counts.clone(), reduction="sum")
            # backward divides by grad_accum and DDP averages over processes: undo both so the
            # gradient is that of (sum of token losses in the window) / (tokens in the window).
            scale = (accelerator.num_processes * cfg.optim.grad_accum / counts.clamp(min=1)).float()

            for batch in window:
                interval.tokens += int(batch["attention_mask"].sum()) + int(
                    (batch["labels"] != IGNORE_INDEX).sum()
                )
                batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}
                with accelerator.accumulate(model):
                    sums = model(**batch)
                    loss = sum(sums[k] * scale[i] for i, k in enumerate(keys))
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.optim.grad_clip > 0:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                    optimizer.step()
                    if accelerator.sync_gradients:
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                interval.add(sums, keys)
            if not accelerator.sync_gradients:
                raise RuntimeError("accumulation window ended without a gradient sync")
            state.step += 1
            interval.counts += counts
            if budget_s is None:
                progress.update(1)
            else:
                progress.n = min(round(time.monotonic() - started), int(progress.total or 0))
                progress.set_postfix(step=state.step, refresh=True)
            if profiler is not None:
                profiler.step()

            at_end = state.step == max_steps or _past(deadline, accelerator)
            if state.step % cfg.checkpoint.log_every == 0 or at_end:
                lr = float(scheduler.get_last_lr()[0])
                row = interval.flush(accelerator, state, max_steps, lr)
                accelerator.log(row, step=state.step)
                if accelerator.is_main_process:
                    ckpt.append_line(metrics_file, row)
            if val_set is not None and (
                at_end or (cfg.eval.every and state.step % cfg.eval.every == 0)
            ):
                assert best_dir is not None
                validate_and_keep_best(
                    unwrapped, tokenizer, val_set, cfg, accelerator, state, eval_file, best_dir
                )
            if cfg.checkpoint.save_every and (state.step % cfg.checkpoint.save_every == 0):
                save_checkpoint(accelerator, cfg, out_dir, state.step)
                saved_step = state.step
    progress.close()

    # --- stopped by SIGTERM: a checkpoint to resume from, then return ------------------------
    if stop.requested:
        if saved_step != state.step and state.step > 0:
            save_checkpoint(accelerator, cfg, out_dir, state.step)
        logger.warning(
            "stopped by SIGTERM at step %d/%d; continue with --resume latest", state.step, max_steps
        )
        accelerator.end_training()
        return TrainResult(
            model=unwrapped.model,
            state=state,
            out_dir=out_dir,
            model_dir=out_dir / "model",
            best_dir=best_dir,
            stopped_by_signal=True,
        )

    # --- export ------------------------------------------------------------------------------
    model_dir = out_dir / "model"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        staging = ckpt.fresh_staging_dir(model_dir)
        export(unwrapped.model, tokenizer, staging, gen)
        ckpt.replace_dir(staging, model_dir)
        ckpt.write_text_atomic(
            out_dir / "train_state.json", json.dumps(state.state_dict(), indent=2)
        )
    accelerator.end_training()
    return TrainResult(
        model=unwrapped.model, state=state, out_dir=out_dir, model_dir=model_dir, best_dir=best_dir
    )


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
            staging = ckpt.fresh_staging_dir(best_dir)
            export(model.model, tokenizer, staging, generation_config(cfg.eval))
            (staging / "eval.json").write_text(json.dumps(result, indent=2))
            ckpt.replace_dir(staging, best_dir)
    return result


class _StopOnSigterm:
    """While entered (on the main thread), SIGTERM only sets `requested`; `agreed` tells every
    rank, at the same step, whether any rank got it (one tiny all-reduce per step)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.requested:
            logger.warning("SIGTERM: finishing this step, saving a checkpoint, then stopping")
        self.requested = True

    def __enter__(self) -> _StopOnSigterm:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False

    def agreed(self, accelerator: Accelerator) -> bool:
        self.requested = _any_rank(self.requested, accelerator)
        return self.requested


class _Interval:
    """Loss sums, token counts and data-wait time since the last log line."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: torch.Tensor | float = 0.0  # a tensor (one count per key) once added to
        self.tokens = 0
        self.data_wait = 0.0
        self.start = time.perf_counter()

    def add(self, sums: dict[str, torch.Tensor], keys: list[str]) -> None:
        for k in keys:
            self.sums[k] = self.sums.get(k, 0.0) + sums[k].detach().double()

    def flush(
        self, accelerator: Accelerator, state: TrainState, max_steps: int, lr: float
    ) -> dict[str, Any]:
        keys = sorted(self.sums)
        local = torch.stack(
            [self.sums[k] for k in keys]
            + [torch.tensor(float(self.tokens), dtype=torch.float64, device=self.device)]
        )
        total = accelerator.reduce(local, reduction="sum")
        # One term per label kind (decoder GSG/summary loss, encoder MLM loss), each a mean.
        counts = torch.as_tensor(self.counts).reshape(-1).expand(len(keys))
        terms = {k: float(total[i] / max(float(counts[i]), 1.0)) for i, k in enumerate(keys)}
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        row = {
            "step": state.step,
            "epoch": state.epoch,
            "loss": sum(terms.values()),
            "lr": lr,
            "tokens_per_s": float(total[-1]) / elapsed,
            "data_wait": self.data_wait / elapsed,
        }
        if "mlm_labels" in terms:
            row["gsg_loss"], row["mlm_loss"] = terms["labels"], terms["mlm_labels"]
        logger.info(
            "step %d/%d | loss %.4g | lr %.2g | %s tok/s | data wait %.0f%%",
            state.step,
            max_steps,
            row["loss"],
            lr,
            _fmt_count(row["tokens_per_s"]),
            100 * row["data_wait"],
        )
        self.reset()
        return row


def _past(deadline: float, accelerator: Accelerator) -> bool:
    """True on every rank once the main process has passed the wall-clock deadline."""
    if deadline == math.inf:
        return False
    return _any_rank(time.monotonic() > deadline, accelerator)


def _any_rank(flag: bool, accelerator: Accelerator) -> bool:
    """True on every rank when `flag` is true on any (so that all ranks stop at the same step).
    One process needs no collective, and no device tensor whose read would sync the device."""
    if accelerator.num_processes == 1:
        return flag
    total = accelerator.reduce(torch.tensor(float(flag), device=accelerator.device), "sum")
    return bool(total > 0)


def save_checkpoint(accelerator: Accelerator, cfg: TrainConfig, out_dir: Path, step: int) -> Path:
    """Every rank saves into a staging directory; once all have, the main process writes the
    run config and renames it to `checkpoints/step_NNNNNNNN`, then prunes to the newest
    `checkpoint.keep` (pegasus_gsg/checkpoint.py)."""
    root = out_dir / "checkpoints"
    staging = ckpt.staging_dir(root / ckpt.checkpoint_name(step))
    if accelerator.is_main_process:
        ckpt.start_checkpoint(root, step)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()  # every rank's files are in staging
    final = root / ckpt.checkpoint_name(step)
    if accelerator.is_main_process:
        ckpt.publish_checkpoint(staging, cfg.fingerprint_dict(), cfg.checkpoint.keep)
        logger.info("saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def _profiler(out_dir: Path) -> torch.profiler.profile:
    """Profile steps 2-4 (after one to warm up); write a trace and a top-operators table."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    profile_dir = out_dir / "profile"

    def on_ready(prof: torch.profiler.profile) -> None:
        profile_dir.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(profile_dir / "trace.json"))
        sort_by = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=sort_by, row_limit=25)
        (profile_dir / "top_operators.txt").write_text(table)
        logger.info(
            "profile written to %s (open trace.json in chrome://tracing or ui.perfetto.dev)\n%s",
            profile_dir,
            table,
        )

    return torch.profiler.profile(
        activities=activities,
        schedule=torch.profiler.schedule(wait=1, warmup=1, active=3, repeat=1),
        on_trace_ready=on_ready,
    )

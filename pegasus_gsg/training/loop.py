"""The training loop shared by pretraining and fine-tuning (they differ in data and weights only).

Read `train` top to bottom; it is a plain PyTorch loop around an `accelerate.Accelerator`:

    set up the Accelerator (bf16 on CUDA, fp32 on CPU; fp16 refused) and seeds; over several
    machines, check that --out is one shared directory (machines.py)
    --resume: the checkpoint to continue from, refused if of another config (resume.py);
              every process loads the one the main process found
    batches:    token-budget, length-bucketed batches from the store, sharded by rank by the
                sampler itself (batches.py); batches are moved to the device here
    model, optimizer = accelerator.prepare(...)   # DDP on many processes
    load_state from the checkpoint; logs cut back to its step
    loop over optimizer steps:
        take the next `grad_accum` micro-batches (the window), time the wait for them
        count real target tokens in the window, all-reduced over processes
        for each micro-batch, inside accelerator.accumulate(model) (DDP syncs on the last):
            per-token loss sums come out of the model (computed on every rank, never gathered)
            loss = sum / tokens-in-window (x processes x grad_accum, which DDP averaging and
                   accelerator.backward divide out again) -> the gradient of the mean token loss
        a NaN/inf loss on any rank (all ranks agree): skip the step or stop (see below)
        clip, optimizer.step, scheduler.step, zero_grad
        every log_every: `step 120/10000 | loss 3.41 | lr 2.9e-4 | 41k tok/s | data wait 3%`
        every eval.every: validation loss (+ generation and ROUGE; the best model is exported),
                          one JSON row appended to OUT/eval.jsonl (validate.py)
        every save_every: a checkpoint (complete or absent, see checkpoint.py),
                          keeping the newest `keep`
        on SIGTERM (all ranks agree at the next step): a checkpoint, then stop
    the loop ends at max_steps, at schedule.stop_at_step (a checkpoint is saved there, for a
    later `--resume latest` to go on to max_steps) or at schedule.max_minutes
    export the final model with save_pretrained (+ tokenizer + GenerationConfig)

A full disk stops the run with one line naming the checkpoint, model or log it was writing
(pegasus_gsg.files.DiskFullError; checkpoint.py): at the start, and right after each
checkpoint, the free space is checked against the next checkpoint's size, so a run without
room for it stops before training the steps it would lose.

Why normalise over the window: with token-budget batches the number of targets per micro-batch
varies a lot; averaging per micro-batch then averaging those would weight a batch of three long
summaries like one of forty short ones. Sum over tokens / tokens in the window is the true mean.

Killed at any instant: every file the run writes is complete or absent (checkpoints, the
exported `model/` and `best/`, `train_state.json`; pegasus_gsg/files.py and checkpoint.py have
the rules), and `--resume latest` continues exactly where the newest complete checkpoint left
off (resume.py).

SIGTERM (what SLURM and Kubernetes send before SIGKILL) does not kill the run: the step in
progress finishes, a checkpoint is saved, and `train` returns with `stopped_by_signal` set (the
entry points then exit with status 143); at most one step, one validation and one checkpoint
after the signal. Resume with `--resume latest`.

A NaN or infinite loss (of any micro-batch, on any rank) is caught after the backward pass and
before the optimizer step, on every rank at the same step (one tiny all-reduce; the losses are
read on the host, one device sync per step). With `optim.max_nonfinite_steps` = N (default 0)
the first N such steps are skipped: gradients dropped, no optimizer or lr-schedule step, `step`
not advanced (the next window is tried as the same step number; its micro-batches stay
consumed), a warning naming the records, and the count in `TrainState.nonfinite_skipped`, the
`nonfinite_skipped` field of metrics.jsonl rows and the log line. The next one raises
`NonFiniteLossError` on every rank ("step 17: loss is nan on records [3, 41] (batch of 2
examples); ..."): nothing of that step is saved, so `--resume latest` continues from the last
good checkpoint (with a higher `--max-nonfinite-steps` to step over the batch).

Only the global main process (`is_main_process`) writes files, except the per-rank RNG state
files that `accelerator.save_state` writes into each checkpoint (`random_states_<rank>.pkl`).
Never `is_local_main_process`: over several machines `--out` is one shared directory
(machines.py), and each machine's local main process would write the same files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import get_scheduler
from transformers.optimization import Adafactor

from pegasus_gsg import files
from pegasus_gsg.data.vocab import IGNORE_INDEX
from pegasus_gsg.training import checkpoint as ckpt
from pegasus_gsg.training.batches import TrainData, batch_stream, build_loader
from pegasus_gsg.training.config import OptimConfig, TrainConfig
from pegasus_gsg.training.machines import (
    check_shared_out,
    process_group_kwargs,
    same_checkpoint,
)
from pegasus_gsg.training.model import Seq2SeqLossModel, export_whole, generation_config
from pegasus_gsg.training.resume import TrainState, cut_logs, resume_from
from pegasus_gsg.training.validate import validate_and_keep_best

logger = logging.getLogger(__name__)

EXIT_STOPPED_BY_SIGNAL = 128 + signal.SIGTERM
"""Exit status of an entry point whose run stopped on SIGTERM after saving a checkpoint."""


@dataclass
class TrainResult:
    """What `train` returns: the trained model and where the run left its files."""

    model: Any
    """The trained `PegasusForConditionalGeneration` (unwrapped)."""
    state: TrainState
    """The run state at the end (step, epoch, validation history, best score)."""
    out_dir: Path
    """The run's `--out` directory (config.yaml, logs, checkpoints/)."""
    model_dir: Path
    """The exported final model (save_pretrained)."""
    best_dir: Path | None
    """The exported best model by validation score; None without a validation set."""
    stopped_by_signal: bool = False
    """True when SIGTERM stopped the run early (after a checkpoint; `model_dir` not written)."""


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
        kwargs_handlers=process_group_kwargs(cfg.collective_timeout_s),
    )
    set_seed(cfg.seed, device_specific=True)  # different dropout per rank, same every run
    check_shared_out(accelerator, out_dir)  # one --out for every machine (machines.py)
    checkpoint = same_checkpoint(accelerator, resume_from(resume, out_dir, cfg))
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        with files.atomic_file(out_dir / "config.yaml") as tmp:
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
        cut_logs((metrics_file, eval_file), state.step)  # rows after it are written again
    if cfg.checkpoint.log_with != "none":  # trackers live on the main process only
        hparams = {
            k: v if isinstance(v, (int, float, str, bool)) else str(v)
            for k, v in cfg.fingerprint_dict().items()
        }
        accelerator.init_trackers("tensorboard", config=hparams)

    unwrapped: Seq2SeqLossModel = accelerator.unwrap_model(model)
    best_dir = out_dir / "best" if val_set is not None else None
    batches = batch_stream(loader, sampler, train_set, state)
    profiler = _profiler(out_dir) if profile and accelerator.is_main_process else None
    saved_step = state.step if checkpoint is not None else None
    weight_bytes = sum(p.numel() * p.element_size() for p in unwrapped.parameters())
    if cfg.checkpoint.save_every and state.step < max_steps:
        next_save = (state.step // cfg.checkpoint.save_every + 1) * cfg.checkpoint.save_every
        check_room_for_checkpoint(accelerator, cfg, out_dir, next_save, weight_bytes, saved_step)

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
    # The bar is closed (its line ended) however the loop ends, an error line included.
    with logging_redirect_tqdm(), profiler or contextlib.nullcontext(), stop, progress:
        started = time.monotonic()
        deadline = started + (budget_s if budget_s is not None else math.inf)
        stop_at = min(max_steps, cfg.schedule.stop_at_step or max_steps)
        at_end = state.step >= stop_at
        while not at_end:
            if stop.agreed(accelerator):
                break
            t0 = time.perf_counter()
            window = [next(batches) for _ in range(cfg.optim.grad_accum)]
            interval.data_wait += time.perf_counter() - t0

            keys = _label_keys(window[0][1])
            local_counts = torch.tensor(
                [sum(int((b[k] != IGNORE_INDEX).sum()) for _, b in window) for k in keys],
                dtype=torch.float64,
                device=accelerator.device,
            )
            counts = accelerator.reduce(local_counts.clone(), reduction="sum")
            # backward divides by grad_accum and DDP averages over processes: undo both so the
            # gradient is that of (sum of token losses in the window) / (tokens in the window).
            scale = (accelerator.num_processes * cfg.optim.grad_accum / counts.clamp(min=1)).float()

            window_sums, losses = [], []
            for _, batch in window:
                interval.tokens += int(batch["attention_mask"].sum()) + int(
                    (batch["labels"] != IGNORE_INDEX).sum()
                )
                batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}
                with accelerator.accumulate(model):  # DDP syncs gradients on the last one only
                    sums = model(**batch)
                    loss = sum(sums[k] * scale[i] for i, k in enumerate(keys))
                    accelerator.backward(loss)
                window_sums.append(sums)
                losses.append(loss.detach())
            if not accelerator.sync_gradients:
                raise RuntimeError("accumulation window ended without a gradient sync")

            # A NaN/inf loss on any rank: every rank drops this step's gradients, then skips the
            # step or stops, before the optimizer could write NaN into the weights.
            nonfinite = _nonfinite_batches(losses, [records for records, _ in window], accelerator)
            if nonfinite:
                optimizer.zero_grad(set_to_none=True)
                state.nonfinite_skipped += 1
                what = _describe_nonfinite(state.step + 1, nonfinite, accelerator.num_processes)
                allowed = cfg.optim.max_nonfinite_steps
                if state.nonfinite_skipped > allowed:
                    raise NonFiniteLossError(_stop_message(what, allowed, saved_step))
                if accelerator.is_main_process:  # every rank knows the same `what`
                    logger.warning(
                        "%s; skipped: no optimizer step (%d of optim.max_nonfinite_steps=%d)",
                        what,
                        state.nonfinite_skipped,
                        allowed,
                    )
                continue
            if cfg.optim.grad_clip > 0:
                accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            for sums in window_sums:
                interval.add(sums, keys)
            state.step += 1
            interval.counts += counts
            if budget_s is None:
                progress.update(1)
            else:
                progress.n = min(round(time.monotonic() - started), int(progress.total or 0))
                progress.set_postfix(step=state.step, refresh=True)
            if profiler is not None:
                profiler.step()

            at_end = state.step == stop_at or _past(deadline, accelerator)
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
            # A stop at schedule.stop_at_step saves too: the run is meant to be continued.
            staged_stop = at_end and state.step == stop_at < max_steps
            if cfg.checkpoint.save_every and (
                state.step % cfg.checkpoint.save_every == 0 or staged_stop
            ):
                save_checkpoint(accelerator, cfg, out_dir, state.step, weight_bytes, saved_step)
                saved_step = state.step
                if not at_end:
                    next_save = state.step + cfg.checkpoint.save_every
                    check_room_for_checkpoint(
                        accelerator, cfg, out_dir, next_save, weight_bytes, saved_step
                    )

    # --- stopped by SIGTERM: a checkpoint to resume from, then return ------------------------
    if stop.requested:
        if saved_step != state.step and state.step > 0:
            save_checkpoint(accelerator, cfg, out_dir, state.step, weight_bytes, saved_step)
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
        hint = ckpt.resume_hint(saved_step)
        export_whole(unwrapped.model, tokenizer, model_dir, generation_config(cfg.eval), hint)
        with files.writing_to(out_dir / "train_state.json", hint=hint):
            files.write_text_atomic(
                out_dir / "train_state.json", json.dumps(state.state_dict(), indent=2)
            )
    accelerator.end_training()
    return TrainResult(
        model=unwrapped.model, state=state, out_dir=out_dir, model_dir=model_dir, best_dir=best_dir
    )


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


def _label_keys(batch: dict[str, torch.Tensor]) -> list[str]:
    return sorted(k for k in batch if k.endswith("labels"))


def save_checkpoint(
    accelerator: Accelerator,
    cfg: TrainConfig,
    out_dir: Path,
    step: int,
    weight_bytes: int,
    saved_step: int | None,
) -> Path:
    """Every rank saves into a staging directory; once all have, the main process writes the
    run config and renames it to `checkpoints/step_NNNNNNNN`, then prunes to the newest
    `checkpoint.keep` (checkpoint.py).

    Raises:
        DiskFullError: on every rank, when the free space is below what the checkpoint needs
            (checked first) or a write met a full disk; its staging directory is removed, the
            previous checkpoints are kept.
    """
    root = out_dir / "checkpoints"
    final = root / ckpt.checkpoint_name(step)
    staging = files.staging_dir(final)
    hint = ckpt.resume_hint(saved_step)
    needed = ckpt.next_checkpoint_bytes(root, weight_bytes, cfg.optim.name)
    failure: files.DiskFullError | None = None

    def attempt(write: Any) -> None:
        nonlocal failure
        try:
            write()
        except Exception as exc:
            failure = files.as_disk_full(exc, final, needed, hint)
            if failure is None:
                raise
        # Every rank learns whether any failed (this also stands for a barrier).
        if _any_rank(failure is not None, accelerator):
            if accelerator.is_main_process:
                shutil.rmtree(staging, ignore_errors=True)
            raise failure or files.DiskFullError(final, needed=needed, hint=hint)

    def start() -> None:
        if accelerator.is_main_process:
            ckpt.start_checkpoint(root, step)
            files.check_free_space(final, needed, hint)

    def publish() -> None:
        if accelerator.is_main_process:
            ckpt.publish_checkpoint(staging, cfg.fingerprint_dict(), cfg.checkpoint.keep)
            logger.info("saved checkpoint %s", final)

    attempt(start)
    attempt(lambda: accelerator.save_state(str(staging)))  # every rank's files
    attempt(publish)
    return final


def check_room_for_checkpoint(
    accelerator: Accelerator, cfg: TrainConfig, out_dir: Path, step: int, weight_bytes: int,
    saved_step: int | None,
) -> None:  # fmt: skip
    """Stop now, on every rank, when the checkpoint of `step` would not fit in the free space:
    better than training up to it and losing those steps (see checkpoint.py).

    Raises:
        DiskFullError: naming the checkpoint, what it needs and what is free.
    """
    root = out_dir / "checkpoints"
    final = root / ckpt.checkpoint_name(step)
    needed = free = 0
    if accelerator.is_main_process:
        needed = ckpt.next_checkpoint_bytes(root, weight_bytes, cfg.optim.name)
        free = files.free_bytes(root)
    if _any_rank(free < needed, accelerator):
        raise files.DiskFullError(
            final,
            needed=needed or None,
            free=free or None,
            reason="not enough free space for the next checkpoint, checked in advance",
            hint=ckpt.resume_hint(saved_step),
        )


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
            "nonfinite_skipped": state.nonfinite_skipped,
        }
        if "mlm_labels" in terms:
            row["gsg_loss"], row["mlm_loss"] = terms["labels"], terms["mlm_labels"]
        logger.info(
            "step %d/%d | loss %.4g | lr %.2g | %s tok/s | data wait %.0f%%%s",
            state.step,
            max_steps,
            row["loss"],
            lr,
            _fmt_count(row["tokens_per_s"]),
            100 * row["data_wait"],
            f" | skipped {state.nonfinite_skipped} non-finite" if state.nonfinite_skipped else "",
        )
        self.reset()
        return row


class NonFiniteLossError(RuntimeError):
    """A step's loss was NaN or infinite once more than `optim.max_nonfinite_steps` allows.

    Raised on every rank at the same step, before that step's optimizer update; the message
    names the step, the loss and the records of each micro-batch that had one."""


def _nonfinite_batches(
    losses: list[torch.Tensor], records: list[list[int]], accelerator: Accelerator
) -> list[dict[str, Any]]:
    """The window's micro-batches, on every rank, whose loss is NaN or infinite (the same list
    on every rank, so that all of them skip or stop together); empty when all are finite.

    Reads the losses on the host, so the step waits for its backward here: the one device sync
    per step that knowing the loss before the optimizer step costs. The records of the bad
    micro-batches travel to every rank only when there are some."""
    finite = torch.isfinite(torch.stack(losses)).tolist()
    mine = [
        {"rank": accelerator.process_index, "loss": float(loss), "records": batch_records}
        for ok, loss, batch_records in zip(finite, losses, records, strict=True)
        if not ok
    ]
    if not _any_rank(bool(mine), accelerator):
        return []
    if accelerator.num_processes == 1:
        return mine
    everyone: list[dict[str, Any]] = gather_object(mine)
    return everyone


def _describe_nonfinite(step: int, batches: list[dict[str, Any]], num_processes: int) -> str:
    """`step 17: loss is nan on records [3, 41] (batch of 2 examples)`, one clause per
    micro-batch (with its rank when there are several processes)."""
    clauses = []
    for b in batches:
        n = len(b["records"])
        where = f" on rank {b['rank']}" if num_processes > 1 else ""
        clauses.append(
            f"loss is {b['loss']} on records {b['records']} "
            f"(batch of {n} example{'s' if n != 1 else ''}{where})"
        )
    return f"step {step}: " + "; ".join(clauses)


def _stop_message(what: str, allowed: int, saved_step: int | None) -> str:
    """The error of a run stopped by a non-finite loss: what happened, that no weights of it
    were saved, and how to go on."""
    limit = (
        "stopped before the optimizer step"
        if allowed == 0
        else f"stopped before the optimizer step: more than optim.max_nonfinite_steps={allowed}"
    )
    resume = (
        f"--resume latest continues from the checkpoint of step {saved_step}"
        if saved_step is not None
        else "no checkpoint yet, --resume latest starts from step 0"
    )
    return f"{what}; {limit}; {resume} (--max-nonfinite-steps N skips up to N such steps)"


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


def _fmt_count(x: float) -> str:
    return f"{x / 1e6:.1f}M" if x >= 1e6 else f"{x / 1e3:.0f}k" if x >= 1e3 else f"{x:.0f}"


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

"""Where a run continues from: `--resume`, checked before the first step, and the run state
that makes the continuation exact.

- `--resume latest` takes the newest complete checkpoint under `OUT/checkpoints` (partial ones,
  left by a kill during a save, are named in a warning and stepped over); with none yet the run
  starts from step 0. `--resume PATH` takes that checkpoint directory.
- A checkpoint whose `run_config.json` differs from the run's fingerprinted config is refused,
  naming the fields that differ: its optimizer state and data order belong to another run.
- A fresh run (no `--resume`) refuses an `--out` that already holds a run: its rows would be
  appended to the old logs, and a later `--resume latest` would pick the old, newer checkpoint.
- On resume, `metrics.jsonl` and `eval.jsonl` are cut back to the checkpoint's step, so the
  resumed run's rows follow on without a duplicate or a gap (pegasus_gsg/training/checkpoint.py
  has the rules for files a kill leaves behind).

Exact resume: a checkpoint holds model, optimizer, scheduler, RNG states (accelerate) and the
`TrainState` (step, epoch, batches consumed this epoch). The sampler's order is a pure function
of (seed, epoch), so `set_epoch(epoch, start_batch=k)` gives the same next batch; the DataLoader
gets its own torch.Generator so creating iterators never draws from the global RNG that dropout
uses. The resumed run therefore reproduces the uninterrupted run's losses.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pegasus_gsg.training import checkpoint as ckpt
from pegasus_gsg.training.checkpoint import RUN_CONFIG_FILE
from pegasus_gsg.training.config import TrainConfig, describe_difference

logger = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Run state saved in every checkpoint (never in the config)."""

    step: int = 0
    """Optimizer steps taken."""
    epoch: int = 0
    """The epoch the next micro-batch comes from (0-based)."""
    batch_in_epoch: int = 0
    """Micro-batches this rank consumed in `epoch` (the same number on every rank)."""
    nonfinite_skipped: int = 0
    """Steps skipped so far because a loss was NaN or infinite (optim.max_nonfinite_steps); not
    counted in `step`."""
    best_metric: float | None = None
    """The best validation score so far (higher is better); None before the first one."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """Validation results so far."""

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def resume_from(resume: str | None, out_dir: Path, cfg: TrainConfig) -> Path | None:
    """The checkpoint to load for `--resume` (None: start from step 0), checked against `cfg`.

    Raises:
        FileNotFoundError: an explicit checkpoint path that does not exist.
        ValueError: a checkpoint of another config, or a fresh run in an `--out` that holds
            another run.
    """
    if not resume:
        refuse_earlier_run(out_dir)
        return None
    checkpoint = find_checkpoint(resume, out_dir)
    if checkpoint is None:
        logger.info("--resume latest: no checkpoint under %s yet; starting from step 0", out_dir)
        return None
    check_resume_config(checkpoint, cfg)
    return checkpoint


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


def cut_logs(logs: Iterable[Path], step: int) -> None:
    """Drop the rows after `step` (and a torn last line) from each JSON Lines log: the killed
    run wrote them after its last checkpoint, and the resumed run writes them again."""
    for log in logs:
        ckpt.truncate_log(log, step)

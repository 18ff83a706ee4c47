"""Throughput of candidate model shapes on this machine, to size the study's step counts.

`python -m experiments.dialogsum --measure-shapes [SHAPE ...]` fine-tunes each shape on all
training pairs for `--measure-minutes` with the project's own loop (one process, one OpenMP
thread, the study's batch budget) and reports its logged tokens/s, wall and CPU seconds per
step and the load average; configs/dialogsum.yaml records what was measured and chosen.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from experiments.dialogsum.data import build_data, read_jsonl_rows
from experiments.dialogsum.plan import Plan
from experiments.dialogsum.stages import Study
from experiments.pipeline import PY, rel
from pegasus_gsg.files import write_text_atomic

logger = logging.getLogger("dialogsum")

SHAPES: dict[str, tuple[str, ...]] = {
    "d256_4+4": (
        "model.d_model=256",
        "model.encoder_layers=4",
        "model.decoder_layers=4",
        "model.attention_heads=4",
        "model.ffn_dim=1024",
    ),
    "d320_5+5": (
        "model.d_model=320",
        "model.encoder_layers=5",
        "model.decoder_layers=5",
        "model.attention_heads=5",
        "model.ffn_dim=1280",
    ),
    "d384_6+6": (
        "model.d_model=384",
        "model.encoder_layers=6",
        "model.decoder_layers=6",
        "model.attention_heads=6",
        "model.ffn_dim=1536",
    ),
}


def measure_shapes(plan: Plan, minutes: float, shapes: Sequence[str]) -> dict[str, Any]:
    """Fine-tune each shape on all training pairs for `minutes` with the project's loop (one
    process, one OpenMP thread, the study's batch budget) and report its logged tokens/s.

    On a shared machine wall-clock rates swing with the neighbours, so the load average and
    the child's CPU seconds per step (startup and export included: an upper bound) are
    reported next to them.
    """
    import os
    import resource

    build_data(plan)
    study = Study(replace(plan, seeds=1))
    study.tokenizer()
    study.prepare_finetune("train_full")
    report = {}
    for shape in shapes:
        run_dir = plan.out / "measure" / shape
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        load_before = os.getloadavg()[0]
        study.runner.run(
            f"measure_{shape}",
            [PY, "-m", "pegasus_gsg.finetune", "--config", plan.finetune_config,
             "--tokenizer", rel(study.tok), "--train", rel(plan.out / "stores" / "train_full"),
             "--out", rel(run_dir), *SHAPES[shape], f"schedule.max_minutes={minutes}",
             "checkpoint.save_every=0", "checkpoint.log_with=none", "checkpoint.log_every=5",
             f"data.max_target_len={plan.max_target_len}"],
            clean=run_dir,
        )  # fmt: skip
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        rows = read_jsonl_rows(run_dir / "metrics.jsonl")
        tok_s = [r["tokens_per_s"] for r in rows]
        steps = rows[-1]["step"]
        cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (
            cpu_before.ru_utime + cpu_before.ru_stime
        )
        report[shape] = {
            "overrides": list(SHAPES[shape]),
            "tokens_per_s_median": statistics.median(tok_s),
            "tokens_per_s_per_interval": [round(t) for t in tok_s],
            "steps": steps,
            "wall_seconds_per_step": 60 * minutes / steps,
            "cpu_seconds_per_step_upper_bound": cpu / steps,
            "load_average_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)],
            "final_loss": rows[-1]["loss"],
        }
        logger.info("%s: %s", shape, report[shape])
    write_text_atomic(plan.out / "measure" / "shapes.json", json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return report

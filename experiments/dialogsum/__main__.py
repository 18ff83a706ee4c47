"""The DialogSum study's command line: `python -m experiments.dialogsum [options]`.

Options override the committed plan (`Plan()`, or `Plan.dry_run()` with `--dry-run`); the
plan is validated again after them. `--measure-shapes` measures throughput instead of running
the study. Errors (a plan over budget, a failed stage, missing data) print one line and exit 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import experiments.dialogsum as package
from experiments.dialogsum.driver import run
from experiments.dialogsum.plan import Plan
from experiments.dialogsum.shapes import SHAPES, measure_shapes
from experiments.pipeline import setup_logging


def parse_args(argv: list[str] | None = None) -> tuple[Plan, argparse.Namespace]:
    """The plan the options describe, and the options (for the mode flags)."""
    p = argparse.ArgumentParser(
        prog="python -m experiments.dialogsum",
        description=(package.__doc__ or "").split("\n\n")[0],
    )
    p.add_argument("--dry-run", action="store_true", help="tiny sizes, separate output dir")
    p.add_argument("--baselines-only", action="store_true", help="data and baselines only")
    p.add_argument(
        "--measure-shapes",
        nargs="*",
        choices=list(SHAPES),
        metavar="SHAPE",
        help=f"measure tokens/s of these shapes (default: all of {list(SHAPES)})",
    )
    p.add_argument("--measure-minutes", type=float, default=1.5)
    p.add_argument("--seed", type=int, help="seeds every sample and run (default 0)")
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--docs", type=Path, help="where results, tables and plots go")
    p.add_argument("--workers", type=int, help="training processes at a time (default 2)")
    p.add_argument("--pretrain-minutes", type=float)
    p.add_argument("--full-minutes", type=float)
    p.add_argument("--wall-minutes", type=float)
    args = p.parse_args(argv)
    plan = Plan.dry_run() if args.dry_run else Plan()
    for name in (
        "seed",
        "data_dir",
        "out",
        "docs",
        "workers",
        "pretrain_minutes",
        "full_minutes",
        "wall_minutes",
    ):
        if getattr(args, name) is not None:
            setattr(plan, name, getattr(args, name))
    plan.__post_init__()
    return plan, args


def main(argv: list[str] | None = None) -> int:
    """Run the study (or measure shapes); 0 on success, 1 with a one-line error."""
    setup_logging()
    try:
        plan, args = parse_args(argv)
        if args.measure_shapes is not None:
            measure_shapes(plan, args.measure_minutes, args.measure_shapes or list(SHAPES))
        else:
            run(plan, baselines_only=args.baselines_only)
    except (RuntimeError, ValueError, FileNotFoundError) as err:
        print(f"dialogsum: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

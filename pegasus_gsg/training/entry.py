"""Command-line plumbing shared by the `pretrain` and `finetune` entry points.

Both are run as `accelerate launch -m pegasus_gsg.pretrain ...` (or plain `python -m`, one
process). Arguments: `--config FILE.yaml` plus overrides (`optim.lr=1e-4` or `--optim.lr 1e-4`),
and a few run switches that are not part of the config: `--resume latest|PATH`, `--profile`.
`--out DIR`, `--init-from DIR`, `--max-samples N`, `--train DIR`, `--validation DIR`,
`--tokenizer DIR` and `--max-nonfinite-steps N` are shorthands for the config keys they name.

Everything a run needs is checked here, before any training: the tokenizer, the stores (which
refuse a tokenizer other than the one they were prepared with), the model's vocabulary.
Library errors (ValueError / FileNotFoundError), a NaN/infinite loss (NonFiniteLossError,
pegasus_gsg/training/loop.py) and a full disk (pegasus_gsg.files.DiskFullError: a checkpoint,
the exported model, a log; or the free-space check before a checkpoint) become one
`prog: error: ...` line and exit 1.
In a multi-process run any other error (a collective failing because a machine was lost) is
logged with its traceback and exits 1 at once, without tearing down the process group.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from pegasus_gsg.files import disk_full_line
from pegasus_gsg.training.config import TrainConfig, load_config

logger = logging.getLogger(__name__)

_SHORTHANDS = {
    "--out": "out_dir",
    "--init-from": "model.init_from",
    "--max-samples": "data.max_samples",
    "--train": "data.train",
    "--validation": "data.validation",
    "--tokenizer": "data.tokenizer",
    "--max-nonfinite-steps": "optim.max_nonfinite_steps",
}
_COUNT_FLAGS = ("--max-samples", "--max-nonfinite-steps")


@dataclass
class RunArgs:
    config: TrainConfig
    resume: str | None
    profile: bool


def parse_run_args(argv: Sequence[str] | None, prog: str, description: str) -> RunArgs:
    """Parse `--config`, `--resume`, `--profile`, shorthands and `key=value` overrides."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=(
            "Any config key can be overridden: optim.lr=1e-4 or --optim.lr 1e-4 "
            "(see pegasus_gsg/training/config.py and configs/*.yaml)."
        ),
    )
    parser.add_argument("--config", help="YAML config file (e.g. configs/tiny.yaml)")
    parser.add_argument(
        "--resume",
        metavar="latest|PATH",
        help="continue exactly from a checkpoint (latest under --out, or a path)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="write a torch.profiler trace + top-operators table for steps 2-4",
    )
    for flag, key in _SHORTHANDS.items():
        parser.add_argument(
            flag,
            dest=key.replace(".", "__"),
            metavar="N" if flag in _COUNT_FLAGS else "DIR",
            help=f"same as {key}=...",
        )
    args, rest = parser.parse_known_args(argv)
    overrides = [
        f"{key}={value}"
        for flag, key in _SHORTHANDS.items()
        if (value := getattr(args, key.replace(".", "__"))) is not None
    ]
    config = load_config(args.config, [*rest, *overrides])
    return RunArgs(config=config, resume=args.resume, profile=args.profile)


def load_run_tokenizer(cfg: TrainConfig) -> Any:
    """The tokenizer of `data.tokenizer`, else of `model.init_from`.

    Raises:
        ValueError: neither is set.
    """
    from pegasus_gsg.data.tokenization import load_tokenizer

    path = cfg.data.tokenizer or cfg.model.init_from
    if path is None:
        raise ValueError(
            "no tokenizer: set data.tokenizer (--tokenizer DIR) or "
            "model.init_from (--init-from DIR) to a directory holding one"
        )
    return load_tokenizer(path)


def open_store(path: str | None, tokenizer: Any, key: str, kind: str) -> Any:
    """Open a prepared store of `kind` and check it was prepared with `tokenizer`.

    Raises:
        ValueError: `path` unset, or a store of another kind / tokenizer.
        FileNotFoundError: no store at `path`.
    """
    from pegasus_gsg.data.store import TokenStore

    if path is None:
        raise ValueError(
            f"{key} is not set: pass --{key.split('.')[-1]} DIR, a store written "
            f"by `pegasus-gsg prepare {kind}`"
        )
    if not Path(path).is_dir():
        raise FileNotFoundError(
            f"{key}={path}: no such data directory; create it with "
            f"`pegasus-gsg prepare {kind} --out {path} ...`"
        )
    store = TokenStore.open(path, tokenizer=tokenizer)
    if store.kind != kind:
        raise ValueError(
            f"{key}={path} is a {store.kind!r} store; this entry point needs a "
            f"{kind!r} store (`pegasus-gsg prepare {kind}`)"
        )
    return store


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def run_cli(main: Callable[[Sequence[str] | None], Any], prog: str) -> int:
    """Run an entry point's `main` as a program: logging set up, errors as one line, exit
    status 143 when SIGTERM stopped training (after a checkpoint)."""
    logging.basicConfig(
        level=logging.INFO if _rank() == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from pegasus_gsg.training.loop import EXIT_STOPPED_BY_SIGNAL, NonFiniteLossError, TrainResult

    try:
        result = main(None)
    except (ValueError, FileNotFoundError, NonFiniteLossError) as err:
        if _rank() == 0:
            print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as err:
        line = disk_full_line(err)
        if line is not None:
            if _rank() == 0:
                print(f"{prog}: error: {line}", file=sys.stderr)
            return 1
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            raise
        # Most often a collective that failed because another machine was lost: print the
        # traceback and leave through `exit_process`, past the teardown of the broken process
        # group, which took ~4 s on its own when measured (machines.py).
        logger.exception("%s failed on rank %d", prog, _rank())
        return 1
    if isinstance(result, TrainResult) and result.stopped_by_signal:
        return EXIT_STOPPED_BY_SIGNAL  # a checkpoint was saved; `--resume latest` continues
    return 0


def exit_process(code: int) -> NoReturn:
    """End an entry point's process with `code`.

    In a multi-process run the interpreter's teardown is skipped (`os._exit`, after flushing):
    destroying the gloo process group there can deadlock (its worker thread needs the GIL to
    free the last barrier while the main thread holds it, joining that thread), which leaves a
    finished rank hanging and `accelerate launch` waiting for it forever. Every file the run
    writes is complete before this point (pegasus_gsg/checkpoint.py).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        sys.exit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

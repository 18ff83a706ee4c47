"""`pegasus-gsg demo`: the whole pipeline on real data with no arguments (see pegasus_gsg.demo)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pegasus_gsg.demo import DEFAULT_DATA_DIR, DemoOptions, run_demo
from pegasus_gsg.evaluation.report import markdown_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = DemoOptions()
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="folder with the corpus and pairs folders (default ../shared/data)",
    )
    parser.add_argument(
        "--corpus",
        default=defaults.corpus,
        help="pretraining corpus: folder under --data-dir or a JSONL file (text)",
    )
    parser.add_argument(
        "--pairs",
        default=defaults.pairs,
        help="fine-tuning pairs: folder under --data-dir or a JSONL file "
        "(document, summary, optional split)",
    )
    parser.add_argument("--out", type=Path, default=defaults.out, help="run directory")
    parser.add_argument(
        "--minutes",
        type=float,
        default=defaults.minutes,
        help="target length of the whole run (training takes ~80%%)",
    )
    parser.add_argument("--corpus-docs", type=int, default=defaults.corpus_docs)
    parser.add_argument("--vocab-size", type=int, default=defaults.vocab_size)
    parser.add_argument("--train-pairs", type=int, default=defaults.train_pairs)
    parser.add_argument("--eval-pairs", type=int, default=defaults.eval_pairs)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--threads",
        type=int,
        default=defaults.threads,
        help="torch threads per training process (default 1)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="seconds-long run through every stage on tiny slices"
    )


def run(args: argparse.Namespace) -> int:
    opts = DemoOptions(
        data_dir=args.data_dir,
        corpus=args.corpus,
        pairs=args.pairs,
        out=args.out,
        minutes=args.minutes,
        corpus_docs=args.corpus_docs,
        vocab_size=args.vocab_size,
        train_pairs=args.train_pairs,
        eval_pairs=args.eval_pairs,
        seed=args.seed,
        threads=args.threads,
        smoke=args.smoke,
    )
    try:
        result = run_demo(opts)
    except RuntimeError as err:  # a stage's command failed: its log is named in the message
        raise ValueError(str(err)) from None
    print()
    print(
        markdown_table(
            ("stage", "time", "result"),
            [(s.name, f"{s.seconds:.0f} s", s.figure) for s in result.stages],
        )
    )
    print()
    print(
        markdown_table(
            ("real subject", "generated subject"),
            [(e["subject"], e["generated"]) for e in result.examples],
        )
    )
    print(f"\nreport: {result.report}")
    return 0

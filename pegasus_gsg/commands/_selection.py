"""Command-line options of gap-sentence selection, shared by `select` and `inspect`.

Only argparse lives here; what the options do is gsg.SelectionOptions / gsg.select_text, and
reading the documents is jsonl.iter_jsonl_texts. No command imports another command.
"""

from __future__ import annotations

import argparse

from pegasus_gsg.core.gsg import STRATEGIES, SelectionOptions, check_gsr

DEFAULT_GSR = SelectionOptions.gsr


def gsr_type(text: str) -> float:
    """argparse type for a gap-sentence ratio in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"gsr must be a number in (0, 1], got {text!r}") from None
    try:
        return check_gsr(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `select` and `inspect` that become a SelectionOptions."""
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default=SelectionOptions.strategy,
        help="how gap sentences are chosen (default: ind_orig, the paper's best)",
    )
    parser.add_argument(
        "--gsr",
        type=gsr_type,
        default=None,
        help=f"gap-sentence ratio in (0, 1] (default: {DEFAULT_GSR})",
    )
    parser.add_argument(
        "--no-stopwords",
        dest="stopwords",
        action="store_false",
        help="keep the 127 English stopwords when scoring",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for random draws (default 0)")
    parser.add_argument("--epoch", type=int, default=0, help="epoch for random draws (default 0)")
    parser.add_argument(
        "--stochastic",
        action="store_true",
        help="mixed & stochastic: draw gsr from --gsr-range and jitter scores by --noise",
    )
    parser.add_argument(
        "--gsr-range",
        nargs=2,
        type=gsr_type,
        default=(0.15, 0.45),
        metavar=("LOW", "HIGH"),
        help="with --stochastic: gsr drawn uniformly from [LOW, HIGH] (default 0.15 0.45)",
    )
    parser.add_argument(
        "--noise",
        type=float,
        default=SelectionOptions.noise,
        help="with --stochastic: scores become s*(1+u), u ~ U(-noise, noise) (default 0.2)",
    )
    parser.add_argument(
        "--text-field", default="text", help="JSON field holding the document (default: text)"
    )


def selection_options(args: argparse.Namespace) -> SelectionOptions:
    """The parsed options as a SelectionOptions (which checks the ranges); ValueError if bad."""
    if args.stochastic and args.gsr is not None:
        raise ValueError(
            "--gsr and --stochastic exclude each other: --stochastic draws gsr from --gsr-range"
        )
    return SelectionOptions(
        strategy=args.strategy,
        gsr=args.gsr if args.gsr is not None else DEFAULT_GSR,
        stopwords=args.stopwords,
        seed=args.seed,
        epoch=args.epoch,
        gsr_range=tuple(args.gsr_range) if args.stochastic else None,
        noise=args.noise,
    )

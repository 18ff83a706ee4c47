"""`pegasus-gsg select`: choose the gap sentences of every JSON Lines document.

    pegasus-gsg select --strategy ind_orig --gsr 0.3 ../shared/data/reuters21578_en/data.jsonl

Reads one document per line (text in field `text` unless `--text-field` says otherwise; "-" or
no FILE reads stdin) and writes one JSON line per input line, in order:
`{"sentences": [...], "selected": [ascending indices], "scores": [one per sentence]}`. An empty
document gives empty lists. This output format is relied on by users' scripts: keep it.

Randomness (`random`, `--stochastic`) comes from gsg.example_rng(seed, record index, epoch), so
a run is reproducible and independent of how the file is split into shards.

A malformed line stops the command with `FILE:LINE: what is wrong` and exit status 1. With
`--output`, the file is written to a temporary name and renamed only when every line succeeded,
so a failed run never leaves a complete-looking file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from pegasus_gsg.gsg import (
    STRATEGIES,
    Ranking,
    check_gsr,
    example_rng,
    rank_sentences,
    select_from_ranking,
    stochastic_select,
)
from pegasus_gsg.jsonl import STDIN, display_name, read_jsonl
from pegasus_gsg.sentences import split_sentences

logger = logging.getLogger(__name__)

DEFAULT_GSR = 0.3


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
    """Options shared by `select` and `inspect`."""
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="ind_orig",
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
        default=0.2,
        help="with --stochastic: scores become s*(1+u), u ~ U(-noise, noise) (default 0.2)",
    )
    parser.add_argument(
        "--text-field", default="text", help="JSON field holding the document (default: text)"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_selection_arguments(parser)
    parser.add_argument(
        "input", nargs="?", default=STDIN, metavar="FILE", help="JSON Lines file, or - for stdin"
    )
    parser.add_argument(
        "-o", "--output", help="write here (atomically) instead of stdout", metavar="FILE"
    )


def check_selection_args(args: argparse.Namespace) -> None:
    """Cross-option checks argparse cannot express; raises ValueError."""
    if args.stochastic and args.gsr is not None:
        raise ValueError(
            "--gsr and --stochastic exclude each other: --stochastic draws gsr from --gsr-range"
        )
    if args.gsr_range[0] > args.gsr_range[1]:
        raise ValueError(f"--gsr-range LOW must be <= HIGH, got {list(args.gsr_range)}")
    if not 0.0 <= args.noise < 1.0:
        raise ValueError(f"--noise must be in [0, 1), got {args.noise}")
    for name in ("seed", "epoch"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} must be >= 0, got {getattr(args, name)}")


def rank_and_select(
    text: str, index: int, args: argparse.Namespace
) -> tuple[list[str], Ranking, list[int]]:
    """Sentences, ranking and ascending gap-sentence indices of record `index` (0-based)."""
    sentences = split_sentences(text)
    rng = example_rng(args.seed, index, args.epoch)
    ranking = rank_sentences(sentences, args.strategy, stopwords=args.stopwords, rng=rng)
    if args.stochastic:
        gsr_range = (args.gsr_range[0], args.gsr_range[1])
        selected = stochastic_select(ranking, rng, gsr_range=gsr_range, noise=args.noise)
    else:
        selected = select_from_ranking(ranking, args.gsr or DEFAULT_GSR)
    return sentences, ranking, selected


def select_document(text: str, index: int, args: argparse.Namespace) -> dict[str, Any]:
    """The output record of one document (record `index` of the input, 0-based)."""
    sentences, ranking, selected = rank_and_select(text, index, args)
    return {"sentences": sentences, "selected": selected, "scores": ranking.scores}


def iter_documents(source: str, text_field: str) -> Iterator[tuple[int, int, str]]:
    """(record index, line number, text) of each line; ValueError `FILE:LINE: ...` if bad."""
    name = display_name(source)
    for index, (line_no, record) in enumerate(read_jsonl(source, required=[text_field])):
        text = record[text_field]
        if not isinstance(text, str):
            raise ValueError(
                f"{name}:{line_no}: field {text_field!r} must be a string, "
                f"got {type(text).__name__ if text is not None else 'null'}"
            )
        yield index, line_no, text


def _write_all(args: argparse.Namespace, out: TextIO) -> int:
    count = empty = 0
    try:
        for index, _, text in iter_documents(args.input, args.text_field):
            record = select_document(text, index, args)
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
            empty += not record["sentences"]
    except ValueError as err:
        raise ValueError(f"{err} [{count} output lines were written before it]") from None
    logger.info("selected gap sentences in %d documents (%d empty)", count, empty)
    return count


def run(args: argparse.Namespace) -> int:
    check_selection_args(args)
    if args.output is None:
        if hasattr(sys.stdout, "reconfigure"):
            sys.stdout.reconfigure(encoding="utf-8")  # documents may hold any script
        _write_all(args, sys.stdout)
        return 0
    target = Path(args.output)
    fd, tmp = tempfile.mkstemp(dir=target.parent or ".", prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            _write_all(args, out)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return 0

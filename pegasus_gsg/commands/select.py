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
import sys
from pathlib import Path
from typing import Any, TextIO

from pegasus_gsg.commands._selection import add_selection_arguments, selection_options
from pegasus_gsg.core.gsg import SelectionOptions, select_text
from pegasus_gsg.data.jsonl import STDIN, iter_jsonl_texts
from pegasus_gsg.files import atomic_file

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_selection_arguments(parser)
    parser.add_argument(
        "input", nargs="?", default=STDIN, metavar="FILE", help="JSON Lines file, or - for stdin"
    )
    parser.add_argument(
        "-o", "--output", help="write here (atomically) instead of stdout", metavar="FILE"
    )


def select_document(text: str, index: int, options: SelectionOptions) -> dict[str, Any]:
    """The output record of one document (record `index` of the input, 0-based)."""
    sentences, ranking, selected = select_text(text, index, options)
    return {"sentences": sentences, "selected": selected, "scores": ranking.scores}


def _write_all(args: argparse.Namespace, options: SelectionOptions, out: TextIO) -> int:
    count = empty = 0
    try:
        for index, _, text in iter_jsonl_texts(args.input, args.text_field):
            record = select_document(text, index, options)
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
            empty += not record["sentences"]
    except ValueError as err:
        raise ValueError(f"{err} [{count} output lines were written before it]") from None
    logger.info("selected gap sentences in %d documents (%d empty)", count, empty)
    return count


def run(args: argparse.Namespace) -> int:
    options = selection_options(args)
    if args.output is None:
        if hasattr(sys.stdout, "reconfigure"):
            sys.stdout.reconfigure(encoding="utf-8")  # documents may hold any script
        _write_all(args, options, sys.stdout)
        return 0
    with atomic_file(Path(args.output)) as tmp, tmp.open("w", encoding="utf-8") as out:
        _write_all(args, options, out)
    return 0

"""`pegasus-gsg inspect`: see what GSG does to a document, in the terminal.

    pegasus-gsg inspect ../shared/data/reuters21578_en/data.jsonl --index 3 --count 2
    pegasus-gsg inspect --text "First sentence. Second one. ..." --strategy seq_uniq

For each document: one row per sentence with its index, its rank in the ranking (1 = most
important), its score (see gsg.Ranking for what the score means per strategy) and the text; the
gap sentences are highlighted (ANSI colour when stdout is a terminal, `>>` markers otherwise,
or as `--color` says). Then the pretraining pair GSG makes of it: the input with `<mask_1>` in
place of each gap sentence, and the target. Selection options and randomness are exactly those
of `pegasus-gsg select`, so the same record index shows the same choice.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import textwrap
from itertools import islice

from pegasus_gsg.commands._selection import add_selection_arguments, selection_options
from pegasus_gsg.core.gsg import SelectionOptions, select_text
from pegasus_gsg.data.jsonl import STDIN, display_name, iter_jsonl_texts
from pegasus_gsg.data.vocab import MASK1_TOKEN

_GAP_STYLE = "\x1b[1;30;43m"  # bold, black on yellow
_DIM = "\x1b[2m"
_BOLD = "\x1b[1m"
_RESET = "\x1b[0m"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_selection_arguments(parser)
    parser.add_argument(
        "input", nargs="?", default=STDIN, metavar="FILE", help="JSON Lines file, or - for stdin"
    )
    parser.add_argument("--text", help="inspect this text instead of reading FILE")
    parser.add_argument("--index", type=int, default=0, help="first record to show (0-based)")
    parser.add_argument("--count", type=int, default=1, help="how many records to show")
    parser.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="highlight with ANSI colours (auto: when stdout is a terminal)",
    )
    parser.add_argument(
        "--width", type=int, default=None, help="wrap at this width (default: terminal width)"
    )
    parser.add_argument(
        "--no-example",
        dest="example",
        action="store_false",
        help="do not print the masked input and the target",
    )


class _Style:
    def __init__(self, color: bool) -> None:
        self.color = color

    def __call__(self, text: str, code: str) -> str:
        return f"{code}{text}{_RESET}" if self.color else text


def render_document(
    text: str,
    index: int,
    where: str,
    options: SelectionOptions,
    *,
    color: bool,
    width: int,
    example: bool,
) -> str:
    """The terminal view of one document (see the module docstring)."""
    style = _Style(color)
    sentences, ranking, selected = select_text(text, index, options)
    rank_of = {sentence: rank for rank, sentence in enumerate(ranking.order, start=1)}
    gaps = set(selected)
    low_high = options.gsr_range
    how = (
        f"stochastic, gsr drawn from {low_high[0]}-{low_high[1]}, noise {options.noise}"
        if low_high is not None
        else f"gsr {options.gsr}"
    )
    stop = "stopwords removed" if options.stopwords else "stopwords kept"
    lines = [
        style(f"document {index} ({where})", _BOLD)
        + f": {len(sentences)} sentences, {len(selected)} gap sentences"
        + style(f"  [{options.strategy}, {how}, {stop}]", _DIM)
    ]
    if not sentences:
        lines.append("  (empty document: nothing to select)")
        return "\n".join(lines)
    digits = len(str(len(sentences) - 1))
    head = f"   {'#':>{digits}}  {'rank':>4}  {'score':>6}  "
    lines.append(style(head + "sentence", _DIM))
    body_width = max(width - len(head), 20)
    for i, sentence in enumerate(sentences):
        is_gap = i in gaps
        marker = ">> " if is_gap and not color else "   "
        prefix = f"{marker}{i:>{digits}}  {rank_of[i]:>4}  {ranking.scores[i]:>6.4f}  "
        wrapped = textwrap.wrap(" ".join(sentence.split()), body_width) or [""]
        for k, chunk in enumerate(wrapped):
            lead = prefix if k == 0 else " " * len(prefix)
            lines.append(lead + (style(chunk, _GAP_STYLE) if is_gap else chunk))
    if example:
        masked = "".join(MASK1_TOKEN + " " if i in gaps else s for i, s in enumerate(sentences))
        target = " ".join(" ".join(sentences[i].split()) for i in selected)
        for label, value in (("input ", masked), ("target", target)):
            wrapped = textwrap.wrap(
                " ".join(value.split()), width - 9, subsequent_indent=" " * 9, initial_indent=""
            )
            lines.append(style(f"  {label}: ", _BOLD) + "\n".join(wrapped or [""]))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    options = selection_options(args)
    if args.index < 0 or args.count < 1:
        raise ValueError(f"--index must be >= 0 and --count >= 1, got {args.index}, {args.count}")
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    width = args.width or shutil.get_terminal_size((100, 24)).columns
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(encoding="utf-8")
    if args.text is not None:
        print(
            render_document(
                args.text, 0, "--text", options, color=color, width=width, example=args.example
            )
        )
        return 0
    name = display_name(args.input)
    documents = islice(iter_jsonl_texts(args.input, args.text_field), args.index, None)
    shown = 0
    for index, line_no, text in islice(documents, args.count):
        if shown:
            print()
        print(
            render_document(
                text,
                index,
                f"{name}:{line_no}",
                options,
                color=color,
                width=width,
                example=args.example,
            )
        )
        shown += 1
    if not shown:
        raise ValueError(f"{name}: no record at index {args.index}")
    return 0

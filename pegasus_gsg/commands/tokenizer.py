"""`pegasus-gsg tokenizer train`: train a PEGASUS-layout Unigram tokenizer on a corpus.

    pegasus-gsg tokenizer train --input ../shared/data/reuters21578_en/data.jsonl \\
        --vocab-size 16000 --out runs/tokenizer

Inputs are anything `prepare` reads (JSON Lines, JSON, CSV, Parquet, text, saved datasets,
globs); `--text-field` may name several fields (e.g. `document summary`). The result loads with
`transformers.AutoTokenizer.from_pretrained(DIR)`; see pegasus_gsg/tokenizer.py for the layout.
"""

from __future__ import annotations

import argparse
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    train = sub.add_parser("train", help="train a tokenizer", description=__doc__.splitlines()[0])
    train.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="FILE",
        help="files, globs or saved dataset directories",
    )
    train.add_argument(
        "--vocab-size",
        type=int,
        required=True,
        help="ids in all, the 106 reserved and 256 byte pieces included",
    )
    train.add_argument("--out", required=True, metavar="DIR", help="directory to save to")
    train.add_argument(
        "--text-field",
        nargs="+",
        default=["text"],
        metavar="FIELD",
        help="field(s) holding text (default: text)",
    )
    train.add_argument("--split", help="the split of a saved DatasetDict")
    train.add_argument("--max-records", type=int, help="read only the first N input rows")


def run(args: argparse.Namespace) -> int:
    from pegasus_gsg.data.sources import iter_texts, open_sources
    from pegasus_gsg.data.tokenization import train_tokenizer

    sources = open_sources(args.input, required_columns=args.text_field, split=args.split)
    start = time.perf_counter()
    texts = list(iter_texts(sources, args.text_field, limit=args.max_records))
    tokenizer = train_tokenizer(texts, args.vocab_size, args.out)
    print(
        f"trained a {len(tokenizer)}-id tokenizer on {len(texts)} texts "
        f"in {time.perf_counter() - start:.1f}s -> {args.out}"
    )
    return 0

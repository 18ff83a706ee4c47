"""`pegasus-gsg prepare pretrain|finetune`: tokenize a corpus once into a token store.

    pegasus-gsg prepare pretrain --input ../shared/data/reuters21578_en/data.jsonl \\
        --tokenizer runs/tokenizer --out runs/reuters.store --num-proc 2
    pegasus-gsg prepare finetune --input ../shared/data/aeslc/data.jsonl \\
        --tokenizer runs/tokenizer --out runs/aeslc-train.store --split train

Sharded (one array job per shard, any machines sharing the output's file system):

    pegasus-gsg prepare pretrain ... --out runs/big.store --shard 0/4   # ... through 3/4

Each shard writes its chunks under OUT.partial/; the last one to finish assembles OUT. A run
that was interrupted (even by kill -9) resumes when started again with the same arguments. See
pegasus_gsg/prepare.py for the design and pegasus_gsg/store.py for the format.

At corpus scale, a store set (many shard stores, read as one) on a Ray cluster or locally:

    pegasus-gsg prepare pretrain --input 'c4/en/c4-train.*-of-01024.json.gz' \
        --tokenizer google-pegasus-large --out runs/c4.storeset --engine ray --ray-address auto
    pegasus-gsg prepare pretrain ... --out runs/c4.storeset --rows-per-shard 50000 --num-proc 2
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pegasus_gsg.core.gsg import STRATEGIES

    sub = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    pretrain = sub.add_parser(
        "pretrain",
        help="documents -> sentences, GSG ranking, token ids",
        description="Documents -> sentences, GSG ranking and scores, per-sentence token ids.",
    )
    finetune = sub.add_parser(
        "finetune",
        help="(document, summary) pairs -> token ids",
        description="(document, summary) pairs -> document and summary token ids.",
    )
    for p, text_default in ((pretrain, "text"), (finetune, "document")):
        p.add_argument(
            "--input",
            nargs="+",
            required=True,
            metavar="FILE",
            help="jsonl/json/csv/parquet/txt files, globs, or saved dataset dirs",
        )
        p.add_argument(
            "--tokenizer",
            required=True,
            metavar="DIR",
            help="a PEGASUS-layout tokenizer directory (`tokenizer train` output or "
            "google/pegasus-large)",
        )
        p.add_argument("--out", required=True, metavar="DIR", help="the store to write")
        p.add_argument(
            "--text-field",
            default=text_default,
            help=f"field with the document (default: {text_default})",
        )
        p.add_argument(
            "--split",
            help="keep only records whose `split` field equals this "
            "(records without one are kept); picks a saved DatasetDict's split",
        )
        p.add_argument(
            "--skip-bad",
            action="store_true",
            help="skip and count malformed records instead of stopping",
        )
        p.add_argument(
            "--max-records", type=int, metavar="N", help="read only the first N input rows"
        )
        p.add_argument("--num-proc", type=int, default=1, metavar="N", help="worker processes")
        p.add_argument(
            "--shard",
            default="0/1",
            metavar="I/N",
            help="compute part I of N of the store (default 0/1: all of it)",
        )
        p.add_argument(
            "--chunk-size",
            type=int,
            default=1000,
            metavar="ROWS",
            help="rows per unit of work and of resume (does not change the result)",
        )
        p.add_argument(
            "--overwrite",
            action="store_true",
            help="replace an existing store made from other inputs or options",
        )
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.add_argument(
            "--engine",
            choices=("local", "ray"),
            default="local",
            help="local (default: this machine) or ray (Ray tasks; writes a store set)",
        )
        p.add_argument(
            "--ray-address",
            metavar="ADDR",
            help="engine ray: `auto` or HOST:PORT of a running cluster (default: start a local "
            "Ray instance with --num-proc CPUs)",
        )
        p.add_argument(
            "--rows-per-shard",
            type=int,
            metavar="ROWS",
            help="write a store set whose shards hold at most ROWS rows of one input file "
            "(default with --engine ray: 50000; without it and engine local: one store)",
        )
    pretrain.add_argument(
        "--strategy",
        default="ind_orig",
        choices=STRATEGIES,
        help="GSG ranking strategy (default: ind_orig)",
    )
    pretrain.add_argument(
        "--no-stopwords", action="store_true", help="keep English stopwords when scoring sentences"
    )
    pretrain.add_argument("--seed", type=int, default=0, help="seed of the `random` strategy")
    finetune.add_argument(
        "--summary-field",
        default="summary",
        help="field with the reference summary (default: summary)",
    )


def run(args: argparse.Namespace) -> int:
    from pegasus_gsg.data.preparation import PrepareConfig, parse_shard, prepare

    shard_index, num_shards = parse_shard(args.shard)
    config = PrepareConfig(
        kind=args.kind,
        text_field=args.text_field,
        summary_field=getattr(args, "summary_field", "summary"),
        strategy=getattr(args, "strategy", "ind_orig"),
        stopwords=not getattr(args, "no_stopwords", False),
        seed=getattr(args, "seed", 0),
        split=args.split,
        skip_bad=args.skip_bad,
        max_records=args.max_records,
        chunk_size=args.chunk_size,
        num_proc=args.num_proc,
        shard_index=shard_index,
        num_shards=num_shards,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        engine=args.engine,
        ray_address=args.ray_address,
        rows_per_shard=args.rows_per_shard,
    )
    result = prepare(args.input, args.tokenizer, args.out, config)
    if result.store is None:
        print(
            f"shard {shard_index}/{num_shards} done ({result.chunks_computed} chunks computed, "
            f"{result.chunks_resumed} resumed); waiting for shards "
            f"{', '.join(map(str, result.waiting_for or []))}: the last one to finish writes "
            f"{args.out}"
        )
        return 0
    m = result.manifest
    assert m is not None
    state = "already prepared" if result.already_prepared else "prepared"
    sentences = f", {m['num_sentences']:,} sentences" if m["kind"] == "pretrain" else ""
    what = f"store set ({len(m['shards'])} shards)" if "shards" in m else "store"
    print(
        f"{state} {m['kind']} {what} {result.store}: {m['num_records']:,} records, "
        f"{m['num_tokens']:,} tokens ({m['dtype']}){sentences}; checksum {m['checksum'][:16]}"
    )
    skipped = {reason: n for reason, n in m["skipped"].items() if n}
    if skipped:
        print("skipped: " + ", ".join(f"{n} {reason}" for reason, n in skipped.items()))
        for example in m["skipped_examples"]:
            print(f"  {example}")
    if m["filtered_other_split"]:
        print(f"outside split {m['options']['split']!r}: {m['filtered_other_split']} records")
    if result.chunks_resumed:
        unit = "shards" if "shards" in m else "chunks"
        print(f"resumed {result.chunks_resumed} of {result.chunks_total} {unit}")
    return 0

"""`pegasus-gsg verify DIR`: re-hash every file of a token store (or of every shard of a store
set, each checked against storeset.json) against its manifest.

Exits 0 when the store is intact, 1 (listing what is wrong) when a file was changed, truncated
or is missing, the manifest is incomplete, or the arrays break the store's invariants.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", metavar="DIR", help="a directory written by `prepare`")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pegasus_gsg.data.store import SET_MANIFEST, read_manifest, read_set_manifest, verify_store

    problems = verify_store(args.store)
    if problems:
        for problem in problems:
            print(f"pegasus-gsg verify: {args.store}: {problem}", file=sys.stderr)
        return 1
    is_set = (Path(args.store) / SET_MANIFEST).is_file()
    manifest = read_set_manifest(args.store) if is_set else read_manifest(args.store)
    shards = f"store set of {len(manifest['shards'])} shards, " if is_set else ""
    print(
        f"{args.store}: OK ({shards}{manifest['kind']}, {manifest['num_records']} records, "
        f"{manifest['num_tokens']} tokens, {manifest['dtype']}, checksum {manifest['checksum']})"
    )
    return 0

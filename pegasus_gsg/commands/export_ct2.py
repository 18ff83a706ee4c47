"""`pegasus-gsg export-ct2 MODEL --compute-type int8 --out DIR`: convert for CTranslate2 offline.

The output directory (model.bin, vocabulary, tokenizer, generation config and a manifest naming
the source checksum) is what `pegasus-gsg serve --model DIR --backend ctranslate2` loads directly,
e.g. converted once in a Docker build. Written atomically: a temp directory renamed at the end.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="a save_pretrained model directory")
    parser.add_argument("--out", required=True, type=Path, help="directory to create")
    parser.add_argument(
        "--compute-type",
        default="float32",
        help="weights stored as float32 (default), int8, int8_float32, float16, bfloat16, ...",
    )
    parser.add_argument(
        "--device", default="cpu", help="device whose supported compute types are checked"
    )


def run(args: argparse.Namespace) -> int:
    from pegasus_gsg.evaluation import ct2

    # The conversion is the same on every CPU; int8's accuracy is checked where it is loaded.
    compute_type = ct2.resolve_compute_type(args.compute_type, args.device, check_int8=False)
    out = ct2.convert(args.model, args.out, compute_type)
    print(f"wrote {out} ({compute_type})")
    return 0

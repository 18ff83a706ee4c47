"""`pegasus-gsg` command line: a thin dispatcher over one module per command.

Each command lives in `pegasus_gsg/commands/<name>.py` (the demo, a recipe, in
`pegasus_gsg/demo.py`) and exposes `add_arguments(parser)` and `run(args) -> int`, or, for a
command that parses its own arguments (`serve`: the server's options and --help),
`run_argv(argv) -> int`, which gets everything after the command name as typed. Modules are
imported only when their command runs, so `pegasus-gsg select` never pays for importing torch.

Library code raises `ValueError` / `FileNotFoundError` with a precise message; this is the one
place that turns them into a single `pegasus-gsg: error: ...` line and a non-zero exit (`serve`
does the same in the server's own `main`). A full disk (`pegasus_gsg.files.DiskFullError`, or
any ENOSPC/EDQUOT/EFBIG a writer did not name) is such a line too: `pegasus-gsg evaluate:
error: no space left writing PATH (...); free space and rerun the same command`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

from pegasus_gsg.files import DiskFullError, disk_full_line

_COMMANDS: dict[str, tuple[str, str]] = {
    "select": ("pegasus_gsg.commands.select", "pick gap sentences for each JSON Lines document"),
    "inspect": ("pegasus_gsg.commands.inspect", "show a document with its gap sentences marked"),
    "tokenizer": ("pegasus_gsg.commands.tokenizer", "train a PEGASUS-layout tokenizer"),
    "prepare": ("pegasus_gsg.commands.prepare", "tokenize a corpus once into an on-disk store"),
    "verify": ("pegasus_gsg.commands.verify", "re-check a prepared store's checksum"),
    "evaluate": ("pegasus_gsg.commands.evaluate", "generate summaries and score them with ROUGE"),
    "export-ct2": ("pegasus_gsg.commands.export_ct2", "convert a model for CTranslate2 serving"),
    "summarize": ("pegasus_gsg.commands.summarize", "call a running gRPC summarization server"),
    "demo": ("pegasus_gsg.demo", "the whole pipeline end to end on a real corpus"),
    "serve": ("pegasus_gsg.commands.serve", "run the gRPC summarization server (see serve --help)"),
}

EXIT_FAILURE = 1


def _build_parser(chosen: str | None) -> tuple[argparse.ArgumentParser, Any]:
    parser = argparse.ArgumentParser(
        prog="pegasus-gsg", description="PEGASUS Gap Sentences Generation toolkit."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    module = None
    for name, (module_name, help_text) in _COMMANDS.items():
        cmd_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            if not hasattr(module, "run_argv"):
                module.add_arguments(cmd_parser)
                cmd_parser.set_defaults(_run=module.run)
    return parser, module


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `pegasus-gsg` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    at = next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))
    parser, module = _build_parser(argv[at] if at < len(argv) else None)
    if module is not None and hasattr(module, "run_argv"):
        parser.parse_args(argv[: at + 1])  # the global options only (-h, -v)
        return int(module.run_argv(argv[at + 1 :]))  # it sets up logging and reports errors itself
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as err:
        print(f"pegasus-gsg {args.command}: error: {err}", file=sys.stderr)
        return EXIT_FAILURE
    except (DiskFullError, OSError, RuntimeError) as err:
        line = disk_full_line(err)
        if line is None:
            raise
        print(f"pegasus-gsg {args.command}: error: {line}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"pegasus-gsg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

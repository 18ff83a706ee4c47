"""`pegasus-gsg serve ARGS`: the gRPC summarization server, the same program as
`python -m pegasus_gsg.server ARGS` (`pegasus-gsg serve --help` lists its options).

The command takes its arguments as typed (`run_argv`, see pegasus_gsg/cli.py) and hands them to
the server's `main(argv)`. The server is imported by name at run time: the library never
imports it statically (an import-linter contract keeps `pegasus_gsg` from importing `server`),
and the other commands never pay for grpc.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

SERVER_MAIN = "pegasus_gsg.server.__main__"
PROG = "pegasus-gsg serve"


def run_argv(argv: Sequence[str]) -> int:
    """Run the server with `argv` until it has drained; its exit status."""
    server_main = importlib.import_module(SERVER_MAIN)
    return int(server_main.main(list(argv), prog=PROG))

"""Python stubs for proto/summarizer.proto, compiled at import time (shared by server and client).

`grpc.protos_and_services` runs protoc (grpcio-tools, a runtime dependency) in memory the first
time this module is imported, so no generated `_pb2.py` file lives in the repository to be edited
by hand or to fall out of date. protoc looks for the .proto on sys.path; the proto/ directory is
put there only for the duration of the import.

The .proto is found, in order, at `$PEGASUS_GSG_PROTO_DIR/summarizer.proto` or in the shipped
`proto/` folder (pegasus_gsg.shipped: inside an installed wheel, or the checkout's `proto/`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import grpc

from pegasus_gsg.shipped import shipped_dir

PROTO_FILE = "summarizer.proto"
SERVICE_NAME = "pegasus.summarizer.v1.Summarizer"


def proto_dir() -> Path:
    """Directory holding summarizer.proto; raises FileNotFoundError naming where it looked."""
    candidates = []
    if os.environ.get("PEGASUS_GSG_PROTO_DIR"):
        candidates.append(Path(os.environ["PEGASUS_GSG_PROTO_DIR"]))
    candidates.append(shipped_dir("proto"))
    for candidate in candidates:
        if (candidate / PROTO_FILE).is_file():
            return candidate
    raise FileNotFoundError(
        f"{PROTO_FILE} not found in {', '.join(str(c) for c in candidates)}; "
        "set PEGASUS_GSG_PROTO_DIR to the directory that holds it"
    )


def _load() -> tuple[Any, Any]:
    """(pb2, pb2_grpc) modules; Any: they are generated at run time, mypy cannot see them."""
    directory = str(proto_dir())
    sys.path.insert(0, directory)
    try:
        pb2_module, grpc_module = grpc.protos_and_services(PROTO_FILE)
        return pb2_module, grpc_module
    finally:
        sys.path.remove(directory)


pb2, pb2_grpc = _load()

"""`pegasus-gsg serve --model DIR` (= `python -m pegasus_gsg.server`): serve a summarizer over gRPC.

The port is bound (health NOT_SERVING) before the model loads, so orchestrators see a live but
not-ready server during the load; SIGTERM/SIGINT start a graceful drain.

Exit status: 0 after a drain, 1 when the model cannot be loaded, 2 for bad arguments or
settings (refused before the port is bound).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from .app import ListenConfig, SummarizerServer
from .settings import BACKENDS, ServingConfig

logger = logging.getLogger("pegasus_gsg.server")

PROG = "python -m pegasus_gsg.server"
EXIT_LOAD_FAILED = 1
EXIT_BAD_SETTINGS = 2


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The CLI; every default is read from ListenConfig / ServingConfig (their one home)."""
    listen, serving = ListenConfig(), ServingConfig()
    description = "Serve a save_pretrained summarizer over gRPC (health, reflection, drain)."
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument(
        "--model",
        required=True,
        type=Path,
        help="save_pretrained model directory (or a directory from `pegasus-gsg export-ct2`)",
    )
    net = p.add_argument_group("network")
    net.add_argument("--host", default=listen.host, help=f"bind address (default {listen.host})")
    net.add_argument("--port", type=int, default=listen.port, help="0 = any free port (logged)")
    net.add_argument(
        "--max-workers", type=int, default=listen.max_workers, help="handler threads = max RPCs"
    )
    net.add_argument("--max-message-bytes", type=int, default=listen.max_message_bytes)
    net.add_argument("--tls-cert", type=Path, help="PEM certificate chain (enables TLS)")
    net.add_argument("--tls-key", type=Path, help="PEM private key")
    net.add_argument(
        "--auth-token-file",
        type=Path,
        help="require 'authorization: Bearer <token>' (token read from this file; "
        "or set PEGASUS_GSG_AUTH_TOKEN)",
    )
    net.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    batch = p.add_argument_group("batching and limits")
    for name in (
        "max_batch_size",
        "max_batch_tokens",
        "max_wait_ms",
        "length_window",
        "max_queue",
        "max_new_tokens_limit",
        "max_num_beams",
        "default_max_new_tokens",
    ):
        default = getattr(serving, name)
        batch.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    batch.add_argument("--max-input-tokens", type=int, help="default: the model's position limit")
    engine = p.add_argument_group("generation backend")
    engine.add_argument(
        "--backend",
        choices=BACKENDS,
        default=serving.backend,
        help="transformers (generate) or ctranslate2 (converted once, cached)",
    )
    engine.add_argument(
        "--compute-type",
        help="ctranslate2: float32 (CPU default), int8, bfloat16 (GPU default), float16, ...",
    )
    engine.add_argument(
        "--ct2-inter-threads",
        type=int,
        default=serving.inter_threads,
        help="ctranslate2: replicas decoding parts of one batch in parallel, each with "
        "--torch-threads / this many threads (default %(default)s)",
    )
    engine.add_argument(
        "--ct2-cache-dir", type=Path, help="ctranslate2: conversion cache (default MODEL/.ct2)"
    )
    run = p.add_argument_group("runtime")
    run.add_argument("--device", help="cpu or cuda (default: cuda if available, else cpu)")
    run.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="intra-op threads for generation, torch or ctranslate2 (default: the CPUs this "
        "process may use)",
    )
    run.add_argument("--grace", type=float, default=10.0, help="seconds in-flight RPCs get")
    run.add_argument(
        "--drain-delay",
        type=float,
        default=0.0,
        help="seconds between NOT_SERVING and refusing new RPCs (let load balancers notice)",
    )
    run.add_argument("--log-level", default="INFO")
    return p


def set_torch_threads(threads: int | None) -> int:
    """One intra-op pool sized to our CPUs, no inter-op pool: only the worker runs torch."""
    import torch

    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    torch.set_num_threads(max(1, threads))
    torch.set_num_interop_threads(1)
    return torch.get_num_threads()


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run the server until SIGTERM/SIGINT has drained it; returns the exit status.

    `prog` names the command in usage and error lines (`pegasus-gsg serve` passes its own).
    """
    args = build_parser(prog).parse_args(argv)
    try:
        return _serve(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_BAD_SETTINGS


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from pegasus_gsg.serving.auth import read_token

    token = os.environ.get("PEGASUS_GSG_AUTH_TOKEN") or None
    if args.auth_token_file is not None:
        token = read_token(args.auth_token_file)
    listen = ListenConfig(
        host=args.host,
        port=args.port,
        max_workers=args.max_workers,
        max_message_bytes=args.max_message_bytes,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        auth_token=token,
        metrics_port=args.metrics_port,
    )
    from .summarizer import SummarizerModel

    if args.backend == "ctranslate2":  # refuse a bad compute type before binding the port
        from pegasus_gsg.evaluation import ct2

        ct2.resolve_compute_type(args.compute_type, args.device or ct2.default_device())
    threads = set_torch_threads(args.torch_threads)
    serving = ServingConfig(
        max_batch_size=args.max_batch_size,
        max_batch_tokens=args.max_batch_tokens,
        max_wait_ms=args.max_wait_ms,
        length_window=args.length_window,
        max_queue=args.max_queue,
        max_input_tokens=args.max_input_tokens,
        max_new_tokens_limit=args.max_new_tokens_limit,
        max_num_beams=args.max_num_beams,
        default_max_new_tokens=args.default_max_new_tokens,
        device=args.device,
        backend=args.backend,
        compute_type=args.compute_type,
        ct2_cache_dir=args.ct2_cache_dir,
        threads=threads,
        inter_threads=args.ct2_inter_threads,
    )
    app = SummarizerServer(listen, lambda: SummarizerModel(args.model, serving))

    def on_signal(signum: int, frame: object) -> None:
        logger.info("received %s", signal.Signals(signum).name)
        threading.Thread(
            target=app.shutdown, args=(args.grace, args.drain_delay), daemon=True
        ).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    app.start()
    if app.metrics_port is not None:
        logger.info("metrics on http://%s:%d/metrics", args.host, app.metrics_port)
    logger.info("intra-op threads: %d", threads)
    try:
        app.load()
    except (OSError, ValueError) as err:  # missing, unreadable or malformed: one line says which
        logger.error("could not load %s: %s", args.model, err)
        app.shutdown(grace=0)
        return 1
    except Exception:
        logger.exception("could not load %s", args.model)
        app.shutdown(grace=0)
        return EXIT_LOAD_FAILED
    app.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())

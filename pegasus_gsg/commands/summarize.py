"""`pegasus-gsg summarize --server HOST:PORT (TEXT | --input FILE.jsonl)`: call a running server.

One TEXT prints its summary (as it is generated with `--stream`). `--input` reads a JSON Lines
file (the `--field` of each record, `document` by default) and writes one JSON line per record
`{"line", "id", "summary", "input_tokens", "output_tokens", "truncated"}` in input order;
requests run `--concurrency` at a time so the server can batch them. A record the server
rejects is reported on stderr with its line number and status, the others are still written,
and the exit status is 1. Every call has a deadline (`--timeout`); only UNAVAILABLE is retried.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pegasus_gsg.data.jsonl import read_jsonl
from pegasus_gsg.files import write_text_atomic

if TYPE_CHECKING:
    import grpc

    from pegasus_gsg.serving.client import SummarizerClient

_OPTION_ARGS = (
    "max_new_tokens",
    "min_new_tokens",
    "num_beams",
    "length_penalty",
    "no_repeat_ngram_size",
    "temperature",
    "top_p",
    "seed",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", nargs="?", help="text to summarize (or use --input)")
    parser.add_argument(
        "--server",
        required=True,
        metavar="HOST:PORT[,HOST:PORT...]",
        help="one address, a DNS name of several replicas, or IP:PORT,IP:PORT,... "
        "(calls go round robin over the healthy ones)",
    )
    parser.add_argument("--input", type=Path, metavar="FILE.jsonl", help="one record per line")
    parser.add_argument("--field", default="document", help="record field holding the text")
    parser.add_argument("--id-field", default="id", help="record field copied to the output")
    parser.add_argument("--output", type=Path, help="write JSON lines here (default: stdout)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline per call, seconds")
    parser.add_argument("--retries", type=int, default=3, help="retries on UNAVAILABLE only (0..4)")
    parser.add_argument("--token-file", type=Path, help="bearer token for an auth server")
    parser.add_argument("--tls-ca", type=Path, help="CA certificate of a TLS server")
    parser.add_argument("--stream", action="store_true", help="print TEXT's summary as it comes")
    parser.add_argument("--truncate", action="store_true", help="truncate over-long inputs")
    gen = parser.add_argument_group("generation options (server defaults when omitted)")
    gen.add_argument("--max-new-tokens", type=int)
    gen.add_argument("--min-new-tokens", type=int)
    gen.add_argument("--num-beams", type=int)
    gen.add_argument("--length-penalty", type=float)
    gen.add_argument("--no-repeat-ngram-size", type=int)
    gen.add_argument("--sample", action="store_true", help="sample instead of greedy/beam")
    gen.add_argument("--temperature", type=float)
    gen.add_argument("--top-p", type=float)
    gen.add_argument("--seed", type=int)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options = {name: getattr(args, name) for name in _OPTION_ARGS}
    options = {k: v for k, v in options.items() if v is not None}
    if args.sample:
        options["do_sample"] = True
    return options


def read_records(path: Path, field: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) for every non-blank line; raises ValueError naming the bad line."""
    if not path.is_file():
        raise FileNotFoundError(f"input file {path} does not exist")
    records = list(read_jsonl(path, skip_blank=True))
    for number, record in records:
        if not isinstance(record.get(field), str):
            raise ValueError(f"{path}:{number}: expected an object with a string {field!r}")
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def _describe(err: grpc.RpcError) -> str:
    return f"{err.code().name}: {err.details()}"


def _run_text(client: SummarizerClient, args: argparse.Namespace, options: dict[str, Any]) -> int:
    if args.stream:
        for message in client.summarize_stream(args.text, truncate=args.truncate, **options):
            sys.stdout.write(message.text_delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
    else:
        print(client.summarize(args.text, truncate=args.truncate, **options).summary)
    return 0


def _run_file(client: SummarizerClient, args: argparse.Namespace, options: dict[str, Any]) -> int:
    import grpc

    records = read_records(args.input, args.field)

    def call(
        item: tuple[int, dict[str, Any]],
    ) -> tuple[int, dict[str, Any], Any, grpc.RpcError | None]:
        number, record = item
        try:
            reply = client.summarize(record[args.field], truncate=args.truncate, **options)
        except grpc.RpcError as err:
            return number, record, None, err
        return number, record, reply, None

    failed = 0
    rows = []
    with ThreadPoolExecutor(args.concurrency) as pool:
        for number, record, reply, err in pool.map(call, records):
            if err is not None:
                failed += 1
                print(f"{args.input}:{number}: {_describe(err)}", file=sys.stderr)
                continue
            row = {
                "line": number,
                "id": record.get(args.id_field),
                "summary": reply.summary,
                "input_tokens": reply.input_tokens,
                "output_tokens": reply.output_tokens,
                "truncated": reply.truncated,
            }
            line = json.dumps(row, ensure_ascii=False) + "\n"
            if args.output is None:
                sys.stdout.write(line)
            else:
                rows.append(line)
    if args.output is not None:
        write_text_atomic(args.output, "".join(rows))
    if failed:
        print(
            f"pegasus-gsg summarize: {failed} of {len(records)} records failed (see above)",
            file=sys.stderr,
        )
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    import grpc

    from pegasus_gsg.serving.client import SummarizerClient

    if (args.text is None) == (args.input is None):
        raise ValueError("give either TEXT or --input FILE.jsonl (exactly one)")
    if not 0 <= args.retries <= 4:
        raise ValueError(f"--retries must be in 0..4, got {args.retries}")
    if args.concurrency < 1:
        raise ValueError(f"--concurrency must be >= 1, got {args.concurrency}")
    options = _options(args)
    client = SummarizerClient.from_files(
        args.server,
        token_file=args.token_file,
        tls_ca=args.tls_ca,
        timeout=args.timeout,
        max_attempts=args.retries + 1,
    )
    with client:
        try:
            if args.input is not None:
                return _run_file(client, args, options)
            return _run_text(client, args, options)
        except grpc.RpcError as err:
            print(f"pegasus-gsg summarize: error: {_describe(err)}", file=sys.stderr)
            return 1

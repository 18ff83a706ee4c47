"""Server load benchmark: generation backends side by side in one run, plus a soak.

Setup (cached under --work-dir, nothing written into the repo): a tokenizer trained on real
text (AESLC email bodies + Reuters news from ../shared/data) and a random-weight PEGASUS of
--d-model (default 512) with --layers (default 6) encoder and decoder layers, saved with
`save_pretrained`. Every request asks min_new_tokens = max_new_tokens, so each decodes exactly
--max-new-tokens tokens whatever the weights: uniform, honest work for every backend.

1. Load: each server in --backends runs as its own process on 127.0.0.1 with the same thread
   count: `transformers` (`pegasus-gsg serve`, batching worker, `generate`: today's server),
   `ct2-float32` / `ct2-int8` (`pegasus-gsg serve --backend ctranslate2 --compute-type ...`,
   same batching worker), and optionally `naive` (one request at a time through
   `model.generate` under a lock). For each repeat, mode (--modes: greedy, beam4) and
   concurrency (1, 4, 16) a load generator sends the same --requests real AESLC documents
   (truncated to --max-input-tokens) from that many client threads; servers alternate so
   machine noise hits all. Reported: requests/s (median over repeats), p50/p99 latency (pooled)
   and each backend's ratio to `transformers`. Targets (2 cores): ct2-int8 at concurrency 16
   >= 3x transformers req/s (greedy and beam 4); ct2-int8 p50 at concurrency 1 <= half.
2. Identity: each backend's summaries at the highest concurrency against transformers' at
   concurrency 1, document by document (float32 must be identical; int8 is reported).
3. Soak (--soak-seconds N on --soak-backend): client threads send a random mix of valid
   requests (unary, batch, stream, beam, truncated over-long input) and invalid ones (empty
   text, out-of-range options, over-long without truncation, an expired deadline, a stream
   cancelled half way); any status other than the one expected for that kind is an unexpected
   error (target 0). The server's RSS is sampled once a second; growth is measured from the end
   of the first 20% of the soak (allocator warm-up) to the end (target <= 5%).

Run: `.venv/bin/python benchmarks/bench_server.py --requests 32 --max-new-tokens 16`
(about 10 minutes on 2 busy cores); `--skip-load --soak-seconds 300` runs only the soak.
`--json FILE` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pegasus_gsg.serving.process import ServerProcess  # noqa: E402
from pegasus_gsg.serving.protos import pb2, pb2_grpc  # noqa: E402

# server name -> extra `pegasus-gsg serve` arguments (naive: the in-file baseline server)
BACKEND_ARGS: dict[str, list[str]] = {
    "transformers": [],
    "ct2-float32": ["--backend", "ctranslate2", "--compute-type", "float32"],
    "ct2-int8": ["--backend", "ctranslate2", "--compute-type", "int8"],
    "naive": [],
}
MODES = {"greedy": 1, "beam4": 4}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/pegasus_gsg_bench_server"))
    p.add_argument("--model", type=Path, help="use this model dir instead of building one")
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--vocab-size", type=int, default=4000)
    p.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument(
        "--backends",
        nargs="+",
        choices=list(BACKEND_ARGS),
        default=["transformers", "ct2-float32", "ct2-int8"],
        help="servers to compare; ratios are to the first",
    )
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    p.add_argument("--soak-backend", choices=list(BACKEND_ARGS), default="ct2-int8")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--max-input-tokens", type=int, default=256)
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    # 1 by default: on a shared, oversubscribed machine OpenMP threads spin at barriers waiting
    # for a descheduled partner, and 2 threads ran ~8x slower than 1 here (load average > 4 on
    # 2 cores). Both servers always get the same count.
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--soak-seconds", type=float, default=0.0)
    p.add_argument("--soak-clients", type=int, default=8)
    p.add_argument("--skip-load", action="store_true", help="only the soak")
    p.add_argument("--json", type=Path, help="write the results here")
    # Internal: run the naive baseline server in this process.
    p.add_argument("--naive-server", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# -- setup ----------------------------------------------------------------------------------------


def read_field(path: Path, field: str, limit: int) -> list[str]:
    out, seen = [], set()
    with path.open(encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)[field]
            if text.strip() and text not in seen:  # AESLC has duplicate bodies
                seen.add(text)
                out.append(text)
            if len(out) >= limit:
                break
    return out


def build_model(args: argparse.Namespace) -> Path:
    from pegasus_gsg.data.tokenization import train_tokenizer
    from tests._model_fixtures import build_model_dir

    name = f"pegasus-d{args.d_model}-l{args.layers}-v{args.vocab_size}"
    model_dir = args.work_dir / name
    if (model_dir / "config.json").exists():
        return model_dir
    texts = read_field(args.data / "aeslc" / "data.jsonl", "document", 3000)
    texts += read_field(args.data / "reuters21578_en" / "data.jsonl", "text", 2000)
    tokenizer_dir = args.work_dir / f"tokenizer-v{args.vocab_size}"
    train_tokenizer(texts, vocab_size=args.vocab_size, out_dir=tokenizer_dir)
    return build_model_dir(
        tokenizer_dir,
        model_dir,
        d_model=args.d_model,
        layers=args.layers,
        heads=max(1, args.d_model // 64),
        ffn_dim=4 * args.d_model,
        max_position_embeddings=512,
        max_new_tokens=args.max_new_tokens,
        init_std=0.1,
    )


# -- the naive baseline server ----------------------------------------------------------------


class NaiveServicer(pb2_grpc.SummarizerServicer):
    """One request at a time: tokenize, `model.generate`, decode, under one lock."""

    def __init__(self, model_dir: Path, max_input_tokens: int) -> None:
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
        self.max_input_tokens = max_input_tokens
        self.lock = threading.Lock()

    def Summarize(self, request, context):
        import torch

        with self.lock, torch.inference_mode():
            inputs = self.tokenizer(
                request.text,
                truncation=True,
                max_length=self.max_input_tokens,
                return_tensors="pt",
            )
            kwargs = {}
            for name in ("max_new_tokens", "min_new_tokens", "num_beams"):
                if request.options.HasField(name):
                    kwargs[name] = getattr(request.options, name)
            output = self.model.generate(**inputs, **kwargs)
            summary = self.tokenizer.decode(output[0], skip_special_tokens=True)
        return pb2.SummarizeResponse(
            summary=summary, input_tokens=inputs["input_ids"].shape[1], batch_size=1
        )


def naive_server_main(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.torch_threads)
    torch.set_num_interop_threads(1)
    servicer = NaiveServicer(args.model, args.max_input_tokens)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
    pb2_grpc.add_SummarizerServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()  # SERVING at once: the model loaded above
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    server.wait_for_termination()


# -- processes ----------------------------------------------------------------------------------


class Server:
    """A server subprocess (pegasus_gsg.serving.process) with a channel to it."""

    def __init__(self, name: str, process: ServerProcess) -> None:
        self.name = name
        self.process = process
        self.ps = psutil.Process(process.proc.pid)
        self.channel: grpc.Channel | None = None

    def connect(self) -> None:
        """Wait until SERVING, open the channel and send one warm-up request."""
        self.target = self.process.wait_until_serving(timeout=600)
        self.channel = grpc.insecure_channel(self.target)
        self.stub = pb2_grpc.SummarizerStub(self.channel)
        options = pb2.GenerationOptions(max_new_tokens=2)
        self.stub.Summarize(pb2.SummarizeRequest(text="warm up", options=options), timeout=600)

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
        self.process.stop(timeout=30)


def start_servers(args: argparse.Namespace, model_dir: Path, names: list[str]) -> dict[str, Server]:
    """Start every server at once (they load in parallel), then wait for each to be SERVING."""
    common = ["--model", str(model_dir), "--port", "0", "--torch-threads", str(args.torch_threads)]
    common += ["--max-input-tokens", str(args.max_input_tokens)]
    servers = {}
    for name in dict.fromkeys(names):
        log = args.work_dir / f"server-{name}.log"
        if name == "naive":
            naive = [sys.executable, str(Path(__file__).resolve()), "--naive-server"]
            process = ServerProcess(common, command=naive, log=log)
        else:
            argv = [*common, "--max-batch-size", str(args.max_batch_size)]
            argv += ["--max-wait-ms", str(args.max_wait_ms), "--max-num-beams", "4"]
            argv += ["--max-new-tokens-limit", str(max(64, args.max_new_tokens))]
            argv += [*BACKEND_ARGS[name], "--ct2-cache-dir", str(args.work_dir / "ct2")]
            process = ServerProcess(argv, log=log)
        servers[name] = Server(name, process)
    try:
        for server in servers.values():
            server.connect()
    except BaseException:
        for server in servers.values():
            server.process.proc.kill()
            server.process.wait()
        raise
    return servers


# -- load -----------------------------------------------------------------------------------------


def run_load(
    server: Server, docs: list[str], concurrency: int, max_new_tokens: int, num_beams: int = 1
) -> tuple[float, list[float], list[str], list[int]]:
    """(seconds, latencies, summaries in doc order, batch sizes) for one pass over `docs`."""
    options = pb2.GenerationOptions(
        max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, num_beams=num_beams
    )
    summaries: list[str] = [""] * len(docs)
    latencies: list[float] = [0.0] * len(docs)
    batch_sizes: list[int] = [0] * len(docs)

    def one(i: int) -> None:
        request = pb2.SummarizeRequest(
            text=docs[i], options=options, overlong=pb2.OVERLONG_POLICY_TRUNCATE
        )
        started = time.perf_counter()
        reply = server.stub.Summarize(request, timeout=600)
        latencies[i] = time.perf_counter() - started
        summaries[i] = reply.summary
        batch_sizes[i] = reply.batch_size

    started = time.perf_counter()
    with futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(len(docs))))
    return time.perf_counter() - started, latencies, summaries, batch_sizes


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def benchmark_load(args: argparse.Namespace, servers: dict[str, Server], docs: list[str]) -> dict:
    names = list(servers)
    base = names[0]
    runs: dict[tuple[str, str, int], list] = {}
    summaries: dict[tuple[str, str, int], list[str]] = {}
    for repeat in range(args.repeats):
        for mode in args.modes:
            for c in args.concurrency:
                for name in names:
                    seconds, lat, out, sizes = run_load(
                        servers[name], docs, c, args.max_new_tokens, MODES[mode]
                    )
                    runs.setdefault((mode, name, c), []).append((seconds, lat, sizes))
                    summaries[(mode, name, c)] = out
                    rate, batch = len(docs) / seconds, statistics.mean(sizes)
                    print(
                        f"repeat {repeat + 1} {mode:<6} c={c:<3} {name:<12} "
                        f"{rate:7.2f} req/s (mean batch {batch:.1f})",
                        flush=True,
                    )
    table = []
    for mode in args.modes:
        for c in args.concurrency:
            row: dict = {"mode": mode, "concurrency": c}
            for name in names:
                results = runs[(mode, name, c)]
                latencies = [x for _, lat, _ in results for x in lat]
                row[name] = {
                    "throughput_rps": statistics.median(len(docs) / s for s, _, _ in results),
                    "p50_ms": 1000 * percentile(latencies, 50),
                    "p99_ms": 1000 * percentile(latencies, 99),
                    "mean_batch_size": statistics.mean(x for _, _, sizes in results for x in sizes),
                }
            for name in names[1:]:
                row[name]["throughput_ratio"] = (
                    row[name]["throughput_rps"] / row[base]["throughput_rps"]
                )
                row[name]["p50_ratio"] = row[name]["p50_ms"] / row[base]["p50_ms"]
            table.append(row)
    top, low = max(args.concurrency), min(args.concurrency)
    identity = {}
    for mode in args.modes:
        reference = summaries[(mode, base, low)]
        for name in names:
            got = summaries[(mode, name, top)]
            same = sum(a == b for a, b in zip(reference, got, strict=True))
            identity[f"{mode}/{name}"] = {
                "compared": len(docs),
                "identical": same,
                "distinct_summaries": len(set(got)),
            }
    return {"base": base, "table": table, "identity": identity}


# -- soak -----------------------------------------------------------------------------------------

OK, INVALID = grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT


def soak(args: argparse.Namespace, server: Server, docs: list[str], long_doc: str) -> dict:
    """Mixed valid/invalid traffic for --soak-seconds; counts unexpected statuses and RSS."""
    stub = server.stub
    opts = pb2.GenerationOptions

    def request(text: str, overlong=pb2.OVERLONG_POLICY_REJECT, **options):
        return pb2.SummarizeRequest(text=text, options=opts(**options), overlong=overlong)

    truncate = pb2.OVERLONG_POLICY_TRUNCATE

    def unary(text, overlong=truncate, timeout=60.0, **options):
        return lambda rng: stub.Summarize(request(text(rng), overlong, **options), timeout=timeout)

    def batch(rng):
        texts = rng.sample(docs, 3)
        options = opts(max_new_tokens=8)
        stub.SummarizeBatch(
            pb2.SummarizeBatchRequest(texts=texts, options=options, overlong=truncate), timeout=60
        )

    def stream_all(rng):
        messages = list(
            stub.SummarizeStream(request(rng.choice(docs), truncate, max_new_tokens=16), timeout=60)
        )
        if "".join(m.text_delta for m in messages) != messages[-1].final.summary:
            raise AssertionError("stream concatenation differs from the final summary")

    def stream_cancel(rng):
        call = stub.SummarizeStream(
            request(rng.choice(docs), truncate, max_new_tokens=24), timeout=60
        )
        next(call)
        call.cancel()
        return grpc.StatusCode.CANCELLED

    def doc(rng):
        return rng.choice(docs)

    def long(rng):
        return long_doc

    reject = pb2.OVERLONG_POLICY_REJECT
    # kind: (weight, action, expected status); an action that returns normally means OK
    kinds = {
        "unary": (30, unary(doc, max_new_tokens=16), OK),
        "batch": (10, batch, OK),
        "stream": (10, stream_all, OK),
        "truncate": (5, unary(long, max_new_tokens=8), OK),
        "beam": (5, unary(doc, max_new_tokens=8, num_beams=2), OK),
        "seeded": (3, unary(doc, max_new_tokens=8, do_sample=True, seed=3), OK),
        "empty": (8, unary(lambda rng: " "), INVALID),
        "bad_option": (8, unary(doc, max_new_tokens=0), INVALID),
        "bad_top_p": (4, unary(doc, do_sample=True, top_p=2.0), INVALID),
        "overlong": (5, unary(long, reject), INVALID),
        "deadline": (5, unary(doc, timeout=0.001), grpc.StatusCode.DEADLINE_EXCEEDED),
        "cancel": (5, stream_cancel, grpc.StatusCode.CANCELLED),
    }
    names = list(kinds)
    weights = [kinds[k][0] for k in names]
    counts = {k: 0 for k in names}
    unexpected: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            kind = rng.choices(names, weights)[0]
            _, action, expected = kinds[kind]
            try:
                result = action(rng)
                code = result if isinstance(result, grpc.StatusCode) else OK
            except grpc.RpcError as err:
                code = err.code()
            except Exception as err:  # a wrong answer counts as an unexpected error too
                code = f"{type(err).__name__}: {err}"
            with lock:
                counts[kind] += 1
                if code != expected:
                    unexpected.append(f"{kind}: got {code}, expected {expected}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.soak_clients)]
    started = time.monotonic()
    rss = []
    for t in threads:
        t.start()
    while time.monotonic() - started < args.soak_seconds:
        time.sleep(1.0)
        rss.append((time.monotonic() - started, server.rss()))
    stop.set()
    for t in threads:
        t.join()
    baseline = next(v for t, v in rss if t >= 0.2 * args.soak_seconds)
    info = stub.GetModelInfo(pb2.GetModelInfoRequest(), timeout=60)
    return {
        "seconds": args.soak_seconds,
        "requests": sum(counts.values()),
        "by_kind": counts,
        "unexpected_errors": len(unexpected),
        "unexpected_examples": unexpected[:10],
        "rss_mib_start": rss[0][1] / 2**20,
        "rss_mib_after_warmup": baseline / 2**20,
        "rss_mib_end": rss[-1][1] / 2**20,
        "rss_mib_max": max(v for _, v in rss) / 2**20,
        "rss_growth_after_warmup": rss[-1][1] / baseline - 1,
        "server_stats": {
            "completed": info.stats.requests_completed,
            "failed": info.stats.requests_failed,
            "dropped": info.stats.requests_dropped,
            "mean_batch_size": round(info.stats.mean_batch_size, 2),
        },
    }


# -- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.naive_server:
        naive_server_main(args)
        return 0
    args.work_dir.mkdir(parents=True, exist_ok=True)
    model_dir = args.model or build_model(args)
    docs = read_field(args.data / "aeslc" / "data.jsonl", "document", 5000)[-args.requests :]
    long_doc = " ".join(read_field(args.data / "reuters21578_en" / "data.jsonl", "text", 30))
    results: dict = {"model": str(model_dir), "settings": {
        k: getattr(args, k) for k in (
            "d_model", "layers", "vocab_size", "requests", "repeats", "max_new_tokens",
            "max_input_tokens", "max_batch_size", "max_wait_ms", "torch_threads", "backends",
            "modes")
    }}  # fmt: skip
    names = [] if args.skip_load else list(args.backends)
    if args.soak_seconds > 0:
        names.append(args.soak_backend)
    servers = start_servers(args, model_dir, names)
    try:
        if not args.skip_load:
            results.update(benchmark_load(args, servers, docs))
            print_load(results)
        if args.soak_seconds > 0:
            results["soak"] = soak(args, servers[args.soak_backend], docs, long_doc)
            results["soak"]["backend"] = args.soak_backend
            print(json.dumps(results["soak"], indent=2))
    finally:
        for server in servers.values():
            server.stop()
    if args.json:
        from pegasus_gsg.files import write_text_atomic

        write_text_atomic(args.json, json.dumps(results, indent=2))
    return 0


def print_load(results: dict) -> None:
    s = results["settings"]
    base = results["base"]
    print(
        f"\nmodel d_model={s['d_model']} layers={s['layers']}+{s['layers']} vocab={s['vocab_size']}"
        f" | {s['requests']} AESLC docs per level, exactly {s['max_new_tokens']} new tokens, "
        f"threads {s['torch_threads']}, median of {s['repeats']} repeats; ratios vs {base}"
    )
    names = s["backends"]
    header = f"{'mode':<6} {'conc':>4}"
    for name in names:
        header += f" | {name + ' req/s':>17} {'p50 ms':>7} {'p99 ms':>7}"
        if name != base:
            header += f" {'x req/s':>7} {'x p50':>6}"
    print(header)
    for row in results["table"]:
        line = f"{row['mode']:<6} {row['concurrency']:>4}"
        for name in names:
            r = row[name]
            line += f" | {r['throughput_rps']:>17.2f} {r['p50_ms']:>7.0f} {r['p99_ms']:>7.0f}"
            if name != base:
                line += f" {r['throughput_ratio']:>6.2f}x {r['p50_ratio']:>5.2f}x"
        print(line)
    for key, ident in results["identity"].items():
        print(
            f"identity {key} (top concurrency vs {base} at concurrency 1): "
            f"{ident['identical']}/{ident['compared']} identical, "
            f"{ident['distinct_summaries']} distinct summaries"
        )


if __name__ == "__main__":
    sys.exit(main())

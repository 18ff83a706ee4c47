"""Server load benchmark: generation backends side by side in one run, plus a soak.

Setup (cached under --work-dir, nothing written into the repo): a tokenizer trained on real
text (AESLC email bodies + Reuters news from ../shared/data) and a random-weight PEGASUS of
--d-model (default 512) with --layers (default 6) encoder and decoder layers, saved with
`save_pretrained` (no trained model of that size exists). Every request asks min_new_tokens =
max_new_tokens, so each decodes exactly its case's new tokens whatever the weights: uniform,
honest work for every backend.

1. GEMM ceiling: this CPU's fp32 and int8 matrix-multiply throughput at --torch-threads on the
   encoder's feed-forward shape (`gemm_ceiling`: torch.mm, torch._int_mm, torch's dynamic int8
   Linear), so that each backend's encoder FLOP/s can be read as a fraction of it.
2. Load: each server in --backends (plus each --variant NAME=ARGS) runs as its own process on
   127.0.0.1 with the same thread count: `transformers` (`pegasus-gsg serve`, batching worker,
   `generate`), `ct2-float32` / `ct2-int8` (`--backend ctranslate2 --compute-type ...`, same
   worker), optionally `naive` (one request at a time through `model.generate` under a lock).
   For each case (--cases), mode (--modes: greedy, beam4) and concurrency, a load generator
   sends the case's --requests texts from that many client threads; servers alternate so
   machine noise hits all. Cases (input tokens incl. `</s>` x new tokens):
     encode   512 x 2    BBC articles of >= 512 tokens, cut: ~all encoder (greedy only); its
                         req/s x encoder FLOPs per input = the backend's encoder FLOP/s
     short    <=256 x 16 AESLC emails, natural lengths (mean ~100), cut at 256: the README's
                         original figure
     long32   512 x 32   BBC articles of >= 512 tokens, cut at 512
     long128  512 x 128  same inputs
     mixed    <=512 x 32 BBC articles at natural lengths, cut at 512 (not in the default run:
                         for --length-window, with --concurrency above --max-batch-size)
   Reported per row: input tokens (mean/max, as the server counted them), new tokens, req/s
   (median over repeats), decoded tokens/s, input tokens/s, p50/p95 latency (pooled), mean
   batch size, ratio to the first server, and summaries identical to the first server's at
   the lowest concurrency (float32 must be all; int8 on a random model flips many).
3. Soak (--soak-seconds N on --soak-backend): client threads send a random mix of valid
   requests (unary, batch, stream, beam, truncated over-long input) and invalid ones (empty
   text, out-of-range options, over-long without truncation, an expired deadline, a stream
   cancelled half way); any status other than the one expected for that kind is an unexpected
   error (target 0). The server's RSS is sampled once a second; growth is measured from the end
   of the first 20% of the soak (allocator warm-up) to the end (target <= 5%).

Run: `.venv/bin/python benchmarks/bench_server.py` (all four cases x greedy/beam 4 x three
backends, 32 requests at concurrency 16: 820 s on the 2-core machine at load average 1.5-5;
transformers' long128 beam 4 alone takes 305 s); `--quick` (encode, short and long32, greedy,
8 requests at concurrency 8: 148 s, niced beside a training run); `--skip-load
--soak-seconds 300` runs only the soak; `--max-new-tokens N` / `--max-input-tokens N` run one
AESLC case of those lengths (the older interface). Tuning comparisons add servers with
--variant, e.g.
`--variant 'int8-window64=--backend ctranslate2 --compute-type int8 --length-window 64'`.
`--json FILE` writes the numbers. The load average at start and end is printed with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import statistics
import sys
import threading
import time
import warnings
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pegasus_gsg.serving.process import ServerProcess  # noqa: E402
from pegasus_gsg.serving.protos import pb2, pb2_grpc  # noqa: E402

CT2_FLOAT32 = ["--backend", "ctranslate2", "--compute-type", "float32"]
CT2_INT8 = ["--backend", "ctranslate2", "--compute-type", "int8"]
# server name -> extra `pegasus-gsg serve` arguments (naive: the in-file baseline server)
BACKEND_ARGS: dict[str, list[str]] = {
    "transformers": [],
    "ct2-float32": CT2_FLOAT32,
    "ct2-int8": CT2_INT8,
    "naive": [],
}
MODES = {"greedy": 1, "beam4": 4}


@dataclass(frozen=True)
class Case:
    """Requests of one shape: `source` documents cut to `input_tokens`, `new_tokens` decoded;
    `full` keeps only documents at least `input_tokens` long (every input exactly that long)."""

    source: str  # aeslc or bbc
    input_tokens: int
    new_tokens: int
    full: bool


CASES = {
    # greedy only: ~all encoder, for its FLOP/s; run first, next to the GEMM measurement
    "encode": Case("bbc", 512, 2, full=True),
    "short": Case("aeslc", 256, 16, full=False),  # the README's original figure
    "long32": Case("bbc", 512, 32, full=True),
    "long128": Case("bbc", 512, 128, full=True),
    "mixed": Case("bbc", 512, 32, full=False),  # natural article lengths: length grouping
}
DEFAULT_CASES = ["encode", "short", "long32", "long128"]
QUICK = {"requests": 8, "concurrency": [8], "cases": ["encode", "short", "long32"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/pegasus_gsg_bench_server"))
    p.add_argument("--model", type=Path, help="use this model dir instead of building one")
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--vocab-size", type=int, default=4000)
    p.add_argument("--requests", type=int, default=32, help="requests per case and level")
    p.add_argument("--concurrency", type=int, nargs="+", default=[16])
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=DEFAULT_CASES)
    # The pre-cases interface: either flag runs one AESLC case of these lengths instead.
    p.add_argument("--max-new-tokens", type=int, help="one custom case: AESLC, N new tokens")
    p.add_argument("--max-input-tokens", type=int, help="one custom case: AESLC cut at N")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=ARGS",
        help="one more server to compare: a name and its `pegasus-gsg serve` arguments, e.g. "
        "'int8-window32=--backend ctranslate2 --compute-type int8 --length-window 32' "
        "(they follow the common ones, so --torch-threads N overrides)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"short check: {', '.join(f'{k}={v}' for k, v in QUICK.items())}, greedy only",
    )
    p.add_argument("--skip-gemm", action="store_true", help="no GEMM ceiling measurement")
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
    args = p.parse_args(argv)
    for spec in args.variant:
        name, sep, extra = spec.partition("=")
        if not sep or not name:
            p.error(f"--variant needs NAME=ARGS, got {spec!r}")
        BACKEND_ARGS[name] = shlex.split(extra)
        args.backends.append(name)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
        args.modes = ["greedy"]
    if args.max_new_tokens or args.max_input_tokens:
        CASES["custom"] = Case(
            "aeslc", args.max_input_tokens or 256, args.max_new_tokens or 32, full=False
        )
        args.cases = ["custom"]
    args.max_input_tokens = max(CASES[c].input_tokens for c in args.cases)
    args.max_new_tokens = max(CASES[c].new_tokens for c in args.cases)
    return args


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
            argv += ["--max-batch-tokens", str(args.max_batch_size * args.max_input_tokens)]
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


def encoder_flops(d_model: int, layers: int, tokens: float) -> float:
    """Multiply-adds x 2 of a PEGASUS encoder on one input of `tokens` tokens: per layer the
    q/k/v/o projections (4 d^2), the d -> 4d -> d feed-forward (8 d^2) and attention's two
    n x n x d products."""
    return layers * (2 * 12 * d_model**2 * tokens + 4 * tokens**2 * d_model)


def load_cases(args: argparse.Namespace, model_dir: Path) -> dict[str, list[str]]:
    """Each case's request texts: real documents cut to at most its input length in tokens.

    A `full` case takes only articles at least that long, so every request is exactly
    `input_tokens` long; the others keep natural lengths (cut at `input_tokens`)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pools = {
        "aeslc": read_field(args.data / "aeslc" / "data.jsonl", "document", 5000)[::-1],
        "bbc": read_field(args.data / "bbc_news_summary" / "data.jsonl", "document", 3000),
    }
    out = {}
    for name in args.cases:
        case = CASES[name]
        texts: list[str] = []
        for text in pools[case.source]:
            # input_tokens - 1 text tokens; the server appends </s>
            encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            offsets = encoded["offset_mapping"]
            if case.full and len(offsets) < case.input_tokens - 1:
                continue
            cut = offsets[: case.input_tokens - 1]
            texts.append(text[: cut[-1][1]] if cut else text)
            if len(texts) == args.requests:
                break
        out[name] = texts
    return out


def run_load(
    server: Server, docs: list[str], concurrency: int, max_new_tokens: int, num_beams: int = 1
) -> dict:
    """One pass over `docs` from `concurrency` client threads: seconds, latencies, summaries
    (doc order), batch sizes and input tokens as the server counted them."""
    options = pb2.GenerationOptions(
        max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, num_beams=num_beams
    )
    n = len(docs)
    result: dict = {"latencies": [0.0] * n, "summaries": [""] * n, "batch_sizes": [0] * n}
    result["input_tokens"] = [0] * n

    def one(i: int) -> None:
        request = pb2.SummarizeRequest(
            text=docs[i], options=options, overlong=pb2.OVERLONG_POLICY_TRUNCATE
        )
        started = time.perf_counter()
        reply = server.stub.Summarize(request, timeout=1800)
        result["latencies"][i] = time.perf_counter() - started
        result["summaries"][i] = reply.summary
        result["batch_sizes"][i] = reply.batch_size
        result["input_tokens"][i] = reply.input_tokens

    started = time.perf_counter()
    with futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(n)))
    result["seconds"] = time.perf_counter() - started
    return result


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def benchmark_load(
    args: argparse.Namespace, servers: dict[str, Server], cases: dict[str, list[str]]
) -> dict:
    """Every (case, mode, concurrency, server); servers alternate so noise hits all."""
    names = list(servers)
    base = names[0]
    runs: dict[tuple[str, str, int, str], list[dict]] = {}
    plan = [
        (case, mode, c)
        for case in args.cases
        for mode in (["greedy"] if case == "encode" else args.modes)
        for c in args.concurrency
    ]
    for repeat in range(args.repeats):
        for case, mode, c in plan:
            for name in names:
                r = run_load(servers[name], cases[case], c, CASES[case].new_tokens, MODES[mode])
                runs.setdefault((case, mode, c, name), []).append(r)
                rate = len(cases[case]) / r["seconds"]
                print(
                    f"repeat {repeat + 1} {case:<8} {mode:<6} c={c:<3} {name:<16} "
                    f"{rate:7.2f} req/s (mean batch {statistics.mean(r['batch_sizes']):.1f}, "
                    f"{r['seconds']:.0f} s)",
                    flush=True,
                )
    table = []
    for case, mode, c in plan:
        n_docs = len(cases[case])
        new_tokens = CASES[case].new_tokens
        for name in names:
            results = runs[(case, mode, c, name)]
            latencies = [x for r in results for x in r["latencies"]]
            rps = statistics.median(n_docs / r["seconds"] for r in results)
            mean_in = statistics.mean(results[0]["input_tokens"])
            row = {
                "case": case, "mode": mode, "concurrency": c, "server": name,
                "requests": n_docs, "input_tokens_mean": mean_in,
                "input_tokens_max": max(results[0]["input_tokens"]), "new_tokens": new_tokens,
                "throughput_rps": rps, "output_tokens_per_s": rps * new_tokens,
                "input_tokens_per_s": rps * mean_in,
                "p50_ms": 1000 * percentile(latencies, 50),
                "p95_ms": 1000 * percentile(latencies, 95),
                "mean_batch_size": statistics.mean(x for r in results for x in r["batch_sizes"]),
            }  # fmt: skip
            if case == "encode":
                flops = encoder_flops(args.d_model, args.layers, mean_in)
                row["encoder_gflops_per_s"] = rps * flops / 1e9
            base_rps = next(
                t["throughput_rps"] for t in table if (t["case"], t["mode"], t["concurrency"],
                t["server"]) == (case, mode, c, base)
            ) if name != base else rps  # fmt: skip
            row["throughput_ratio"] = rps / base_rps
            reference = runs[(case, mode, min(args.concurrency), base)][0]["summaries"]
            got = results[0]["summaries"]
            row["identical_to_base"] = sum(a == b for a, b in zip(reference, got, strict=True))
            table.append(row)
    return {"base": base, "table": table}


# -- GEMM ceiling ---------------------------------------------------------------------------------


def gemm_ceiling(args: argparse.Namespace, seconds: float = 2.0) -> dict:
    """This CPU's fp32 and int8 matrix-multiply throughput on the encoder's own shapes.

    (16 x 512 tokens) x 512 -> 2048 (the feed-forward's first product) with --torch-threads
    threads: `torch.mm` fp32 (oneDNN/MKL sgemm), `torch._int_mm` s8 x s8 -> s32, and torch's
    dynamic-quantized Linear (fbgemm: quantizes the activations per call, as CTranslate2's int8
    does). Ops counted as 2 x M x K x N per call; each kernel's best of 5 windows.
    """
    import torch

    torch.set_num_threads(args.torch_threads)
    m, k, n = 16 * 512, args.d_model, 4 * args.d_model
    a, b = torch.randn(m, k), torch.randn(k, n)
    qa = torch.randint(-128, 127, (m, k), dtype=torch.int8)
    qb = torch.randint(-128, 127, (k, n), dtype=torch.int8)
    with warnings.catch_warnings():  # torch.ao's deprecation notices: still the CPU int8 path
        warnings.simplefilter("ignore")
        dynamic = torch.ao.quantization.quantize_dynamic(
            torch.nn.Sequential(torch.nn.Linear(k, n)), {torch.nn.Linear}, dtype=torch.qint8
        )
    kernels = {
        "fp32 torch.mm": lambda: torch.mm(a, b),
        "int8 torch._int_mm": lambda: torch._int_mm(qa, qb),
        f"int8 dynamic Linear ({torch.backends.quantized.engine})": lambda: dynamic(a),
    }
    # The best of 5 short windows per kernel, kernels interleaved: a ceiling, so a window in
    # which another process took the core must not count.
    out = dict.fromkeys(kernels, 0.0)
    with torch.inference_mode():
        for fn in kernels.values():
            fn()
        for _ in range(5):
            for name, fn in kernels.items():
                calls, started = 0, time.perf_counter()
                while time.perf_counter() - started < seconds / 5:
                    fn()
                    calls += 1
                rate = 2 * m * k * n * calls / (time.perf_counter() - started) / 1e9
                out[name] = max(out[name], rate)
    return {"shape": [m, k, n], "threads": args.torch_threads, "gflops_per_s": out}


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
    long_doc = " ".join(read_field(args.data / "reuters21578_en" / "data.jsonl", "text", 30))
    results: dict = {"model": str(model_dir), "settings": {
        k: getattr(args, k) for k in (
            "d_model", "layers", "vocab_size", "requests", "repeats", "cases", "concurrency",
            "max_batch_size", "max_wait_ms", "torch_threads", "backends", "modes")
    }}  # fmt: skip
    results["load_average_start"] = list(os.getloadavg())
    started = time.monotonic()
    if not args.skip_load and not args.skip_gemm:
        results["gemm"] = gemm_ceiling(args)
    names = [] if args.skip_load else list(args.backends)
    if args.soak_seconds > 0:
        names.append(args.soak_backend)
    cases = {} if args.skip_load else load_cases(args, model_dir)
    docs = read_field(args.data / "aeslc" / "data.jsonl", "document", 5000)[-args.requests :]
    servers = start_servers(args, model_dir, names)
    try:
        if not args.skip_load:
            results.update(benchmark_load(args, servers, cases))
            results["load_average_end"] = list(os.getloadavg())
            results["seconds"] = time.monotonic() - started
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
        f"\nmodel d_model={s['d_model']} layers={s['layers']}+{s['layers']} "
        f"vocab={s['vocab_size']} (random init) | {s['requests']} requests per row, "
        f"concurrency {s['concurrency']}, threads {s['torch_threads']} per server, max batch "
        f"{s['max_batch_size']}, median of {s['repeats']} repeats | load average "
        f"{results['load_average_start'][0]:.2f} -> {results['load_average_end'][0]:.2f} | "
        f"{results['seconds']:.0f} s"
    )
    print(
        "in tok: tokens per input incl. </s> (mean/max, as the server counted them); "
        "new: tokens decoded per request (min = max); tok/s: decoded tokens/s"
    )
    header = (
        f"{'case':<8} {'mode':<6} {'c':>3} {'server':<18} {'in tok':>8} {'new':>4} "
        f"{'req/s':>7} {'tok/s':>7} {'in tok/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'batch':>5} "
        f"{'x ' + base[:5]:>8} {'same':>5}"
    )
    print(header)
    for r in results["table"]:
        print(
            f"{r['case']:<8} {r['mode']:<6} {r['concurrency']:>3} {r['server']:<18} "
            f"{r['input_tokens_mean']:>4.0f}/{r['input_tokens_max']:<3} {r['new_tokens']:>4} "
            f"{r['throughput_rps']:>7.2f} {r['output_tokens_per_s']:>7.1f} "
            f"{r['input_tokens_per_s']:>8.0f} {r['p50_ms']:>8.0f} {r['p95_ms']:>8.0f} "
            f"{r['mean_batch_size']:>5.1f} {r['throughput_ratio']:>7.2f}x "
            f"{r['identical_to_base']:>2}/{r['requests']:<2}"
        )
    gemm = results.get("gemm")
    if gemm:
        m, k, n = gemm["shape"]
        print(f"\nGEMM ceiling ({m}x{k} @ {k}x{n}, {gemm['threads']} thread(s)):")
        for name, value in gemm["gflops_per_s"].items():
            print(f"  {name:<34} {value:8.1f} GFLOP/s")
        fp32 = gemm["gflops_per_s"]["fp32 torch.mm"]
        int8 = max(v for k, v in gemm["gflops_per_s"].items() if k.startswith("int8"))
        for r in results["table"]:
            if "encoder_gflops_per_s" in r:
                ceiling = int8 if "int8" in r["server"] else fp32
                kind = "int8" if "int8" in r["server"] else "fp32"
                print(
                    f"  encoder {r['server']:<18} {r['encoder_gflops_per_s']:8.1f} GFLOP/s = "
                    f"{100 * r['encoder_gflops_per_s'] / ceiling:4.0f}% of the best {kind} GEMM"
                )


if __name__ == "__main__":
    sys.exit(main())

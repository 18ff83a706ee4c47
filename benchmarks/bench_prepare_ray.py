"""Benchmark `prepare --engine ray` against `--engine local`, side by side in one run.

    .venv/bin/python benchmarks/bench_prepare_ray.py                  # all of reuters21578_en
    .venv/bin/python benchmarks/bench_prepare_ray.py --repeats 1 --max-docs 3000

The same store set (all of Reuters, `--rows-per-shard` rows per unit, default 1,000: 15 units)
is prepared by

- local: `--engine local --num-proc 2` (a process pool of 2), in a fresh process without
  Ray (as the CLI runs it), timed inside it,
- ray: `--engine ray` on a local Ray instance of 2 CPUs (`ray.init(num_cpus=2)`, started once
  and timed separately: a cluster is started once per job, not per store),

interleaved, --repeats times; medians reported (the machine is shared and noisy). The outputs'
set checksums are compared (they must be equal). Also measured:

- per-task overhead: the median round trip of an empty Ray task (submitted 200 at a time), and
  (ray wall - local wall) / units;
- CPU per document, and from the Ray rate per core the scaling arithmetic for C4 (365M
  documents; C4 documents average ~2x Reuters' tokens, so the token-based figure is given too).

Measured 2026-12-02 on the shared 2-core dev machine at load ~11 (`--repeats 2`, all of Reuters,
14,925 docs, 3.0M tokens, 15 units): local 57.4 s (260 docs/s), Ray 57.1 s (261 docs/s),
overhead -0.6%; set checksums equal; empty Ray task 1.55 ms; (ray - local) per unit -22 ms; Ray
start-up 16.4 s; local 1.40 CPU ms/doc -> C4 ~142 core-hours by documents, ~302 by tokens.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
C4_DOCS = 365_000_000
C4_TOKENS = 156_000_000_000  # T5 paper: ~156B tokens in C4.en


def cpu_seconds() -> float:
    """User + system CPU of this process and its reaped children (local pool workers)."""
    own, children = (
        resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run(engine: str, source: Path, tokenizer: Path, out: Path, args: argparse.Namespace):
    """(wall s, CPU s of the processes doing the work, manifest) of one prepare."""
    from pegasus_gsg.data.preparation import PrepareConfig, prepare

    if out.exists():
        shutil.rmtree(out)
    config = PrepareConfig(
        "pretrain",
        engine=engine,
        num_proc=2,
        rows_per_shard=args.rows_per_shard,
        max_records=args.max_docs,
    )
    before = cpu_seconds()
    start = time.perf_counter()
    result = prepare([str(source)], tokenizer, out, config)
    return time.perf_counter() - start, cpu_seconds() - before, result.manifest


def run_local_apart(source: Path, tokenizer: Path, out: Path, args: argparse.Namespace):
    """`run("local", ...)` in a fresh process: its pool forks from a process without Ray's
    threads, as the CLI does; timed inside, so the interpreter's start-up is not counted."""
    here = str(Path(__file__).parent)
    code = (
        f"import argparse, json, sys; sys.path.insert(0, {here!r}); import bench_prepare_ray as b; "
        "from pathlib import Path; a = argparse.Namespace(**json.loads(sys.argv[1])); "
        "print(json.dumps(b.run('local', Path(a.source), Path(a.tokenizer), Path(a.out), a)))"
    )
    params = {**vars(args), "source": str(source), "tokenizer": str(tokenizer), "out": str(out)}
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in params.items()}
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(params)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    wall, cpu, manifest = json.loads(done.stdout.strip().splitlines()[-1])
    return wall, cpu, manifest


def empty_task_ms(ray, n: int = 200) -> float:
    @ray.remote(num_cpus=1)
    def empty() -> None:
        return None

    ray.get([empty.remote() for _ in range(20)])  # warm the workers
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        ray.get([empty.remote() for _ in range(n)])
        rounds.append((time.perf_counter() - start) / n * 1000)
    return statistics.median(rounds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="../shared/data")
    parser.add_argument("--tokenizer", type=Path, help="a tokenizer dir (default: train 16k)")
    parser.add_argument("--max-docs", type=int, help="only the first N documents")
    parser.add_argument("--rows-per-shard", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    import ray

    source = args.data / "reuters21578_en" / "data.jsonl"
    if not source.exists():
        print(f"{source} not found", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="bench_prepare_ray_"))
    try:
        tokenizer = args.tokenizer
        if tokenizer is None:
            from pegasus_gsg.data.jsonl import read_jsonl
            from pegasus_gsg.data.tokenization import train_tokenizer

            records = read_jsonl(source, required=("text",))
            docs = [record["text"] for (_, record), _ in zip(records, range(5000), strict=False)]
            tokenizer = work / "tokenizer"
            train_tokenizer(docs, 16_000, tokenizer)
        start = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        startup = time.perf_counter() - start
        task_ms = empty_task_ms(ray)
        walls: dict[str, list[float]] = {"local": [], "ray": []}
        cpu: dict[str, list[float]] = {"local": [], "ray": []}
        checksums: dict[str, str] = {}
        manifest: dict = {}
        for _ in range(args.repeats):
            wall, cpu_s, manifest = run_local_apart(source, tokenizer, work / "local", args)
            walls["local"].append(wall)
            cpu["local"].append(cpu_s)
            checksums["local"] = manifest["checksum"]
            wall, cpu_s, manifest = run("ray", source, tokenizer, work / "ray", args)
            walls["ray"].append(wall)
            cpu["ray"].append(cpu_s)  # the driver's CPU only (Ray workers are not children)
            checksums["ray"] = manifest["checksum"]
        ray.shutdown()
        docs_n, tokens = manifest["num_records"], manifest["num_tokens"]
        units = len(manifest["shards"])
        med = {k: statistics.median(v) for k, v in walls.items()}
        rate = {k: docs_n / v for k, v in med.items()}
        per_core = rate["ray"] / 2
        results = {
            "documents": docs_n,
            "tokens": tokens,
            "units": units,
            "repeats": args.repeats,
            "median_wall_s": med,
            "docs_per_s": rate,
            "ray_overhead": med["ray"] / med["local"] - 1,
            "ray_startup_s": startup,
            "empty_task_ms": task_ms,
            "extra_ms_per_unit": (med["ray"] - med["local"]) / units * 1000,
            "local_cpu_ms_per_doc": statistics.median(cpu["local"]) / docs_n * 1000,
            "checksums_equal": checksums["local"] == checksums["ray"],
            "docs_per_s_per_core": per_core,
            "c4_core_hours_by_docs": C4_DOCS / per_core / 3600,
            "c4_core_hours_by_tokens": C4_TOKENS / (tokens / med["ray"] / 2) / 3600,
        }
        # Load-independent: CPU seconds per document of the local run (pool workers included).
        cpu_per_doc = results["local_cpu_ms_per_doc"] / 1000
        results["c4_core_hours_by_cpu_docs"] = C4_DOCS * cpu_per_doc / 3600
        results["c4_core_hours_by_cpu_tokens"] = C4_TOKENS * cpu_per_doc * docs_n / tokens / 3600
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"all of Reuters: {docs_n:,} documents, {tokens:,} tokens, {units} units")
    print(f"medians of {args.repeats}, wall s: local {med['local']:.2f}, ray {med['ray']:.2f}")
    print(
        f"documents/s: local (2 processes) {rate['local']:,.0f}, ray (2 workers) "
        f"{rate['ray']:,.0f}; Ray overhead {results['ray_overhead']:+.1%} (target <= +15%)"
    )
    print(
        f"per task: empty Ray task {task_ms:.2f} ms; (ray - local) per unit "
        f"{results['extra_ms_per_unit']:.0f} ms; Ray start-up once {startup:.1f} s"
    )
    print(f"set checksums equal: {results['checksums_equal']}")
    print(
        f"C4 at {per_core:,.0f} docs/s per core: {results['c4_core_hours_by_docs']:,.0f} "
        f"core-hours by documents, {results['c4_core_hours_by_tokens']:,.0f} by tokens"
    )
    print(
        f"C4 at {results['local_cpu_ms_per_doc']:.2f} CPU ms per document (local run, all "
        f"processes): {results['c4_core_hours_by_cpu_docs']:,.0f} core-hours by documents, "
        f"{results['c4_core_hours_by_cpu_tokens']:,.0f} by tokens"
    )
    if args.json:
        from pegasus_gsg.files import write_text_atomic

        write_text_atomic(args.json, json.dumps(results, indent=2))
    return 0 if results["checksums_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())

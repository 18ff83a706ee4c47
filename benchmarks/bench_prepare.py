"""Benchmark `prepare pretrain` against the plain way, side by side in one run.

    .venv/bin/python benchmarks/bench_prepare.py                 # all of reuters21578_en
    .venv/bin/python benchmarks/bench_prepare.py --repeats 1 --max-docs 3000 --plain-docs 200

Ours: `pegasus_gsg.data.preparation` end to end (read + hash the input, split, Ind-Orig ranking, one
tokenizer pass per document, chunk files, assembly, checksums) with 1 and 2 processes.

Plain way (the baseline of issue 3): a `datasets.Dataset.map` that ranks each document's
sentences with `rouge_score.RougeScorer(["rouge1"])` (every sentence scored against the text of
the rest of the document), tokenizes every sentence with the same tokenizer, and stores the
ranking and the ids with `datasets`' default features (int64), then `save_to_disk`. It runs on
the first `--plain-docs` documents only (it is slow), so it is compared by per-document rate.

Bytes on disk per token: every file of our store (manifest included) / its tokens, against the
saved plain dataset / its tokens. The tokenizer is trained here (16,000 ids: a 16-bit vocab) on
the first 5,000 documents unless --tokenizer is given. Medians over --repeats runs, interleaved
so that load from other processes on the machine hits every variant alike.

Measured 2026-11-26 on the 2-core dev machine, quiet, all of reuters21578_en (14,925 docs,
3.0M tokens), medians of 3 (`--repeats 3 --plain-docs 300`): plain 185 docs/s (5.4 CPU ms/doc);
ours 1 process 1,713 docs/s (0.88 CPU ms/doc, x9.3 per doc); ours 2 processes 2,019 docs/s
(x10.9; x1.18 over 1 process: IPC and a tokenizer per worker cost ~10% more CPU per doc, and the
final assembly and checksum are serial). Bytes per token: ours 2.31 (ids 2.00; sentence ends
0.07, ranking order 0.04, ranking scores (float32) 0.14, per-record arrays 0.06), plain 8.79
(x3.8). Earlier, with the machine at load 5-7: plain 70, ours 503 / 421 docs/s (x7.2).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped children (pool workers)."""
    own, children = (
        resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_ours(source: Path, tokenizer: Path, out: Path, num_proc: int, max_docs: int | None):
    from pegasus_gsg.data.preparation import PrepareConfig, prepare

    if out.exists():
        shutil.rmtree(out)
    config = PrepareConfig("pretrain", num_proc=num_proc, max_records=max_docs)
    start, cpu = time.perf_counter(), cpu_seconds()
    result = prepare([str(source)], tokenizer, out, config)
    return time.perf_counter() - start, cpu_seconds() - cpu, result.manifest


def run_plain(docs: list[str], tokenizer_dir: Path, out: Path) -> tuple[float, int]:
    import datasets
    from rouge_score import rouge_scorer
    from transformers import AutoTokenizer

    from pegasus_gsg.core.sentences import split_sentences

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    scorer = rouge_scorer.RougeScorer(["rouge1"])

    def process(example: dict) -> dict:
        sentences = split_sentences(example["text"])
        scores = []
        for i, sentence in enumerate(sentences):
            rest = "".join(sentences[:i] + sentences[i + 1 :])
            scores.append(scorer.score(rest, sentence)["rouge1"].fmeasure)
        order = sorted(range(len(sentences)), key=lambda i: (-scores[i], -i))
        ids = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in sentences]
        return {"sentence_ids": ids, "order": order, "scores": scores}

    if out.exists():
        shutil.rmtree(out)
    start, cpu = time.perf_counter(), cpu_seconds()
    dataset = datasets.Dataset.from_dict({"text": docs})
    mapped = dataset.map(process, remove_columns=["text"], load_from_cache_file=False)
    mapped.save_to_disk(str(out))
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    tokens = sum(len(s) for ids in mapped["sentence_ids"] for s in ids)
    return seconds, cpu, tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="../shared/data")
    parser.add_argument("--tokenizer", type=Path, help="a tokenizer dir (default: train one)")
    parser.add_argument("--max-docs", type=int, help="prepare only the first N documents")
    parser.add_argument("--plain-docs", type=int, default=300, help="documents for the baseline")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    source = args.data / "reuters21578_en" / "data.jsonl"
    if not source.exists():
        print(f"{source} not found", file=sys.stderr)
        return 1
    from pegasus_gsg.data.jsonl import read_jsonl

    docs = [record["text"] for _, record in read_jsonl(source, required=("text",))]
    work = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    try:
        tokenizer = args.tokenizer
        if tokenizer is None:
            from pegasus_gsg.data.tokenization import train_tokenizer

            tokenizer = work / "tokenizer"
            train_tokenizer(docs[:5000], 16_000, tokenizer)
        times: dict[str, list[float]] = {"ours_1": [], "ours_2": [], "plain": []}
        cpu: dict[str, list[float]] = {key: [] for key in times}
        manifest: dict = {}
        plain_tokens = 0
        for repeat in range(args.repeats):
            seconds, cpu_s, plain_tokens = run_plain(
                docs[: args.plain_docs], tokenizer, work / "plain"
            )
            times["plain"].append(seconds)
            cpu["plain"].append(cpu_s)
            for procs in (1, 2):
                seconds, cpu_s, manifest = run_ours(
                    source, tokenizer, work / f"ours{procs}", procs, args.max_docs
                )
                times[f"ours_{procs}"].append(seconds)
                cpu[f"ours_{procs}"].append(cpu_s)
            print(
                f"repeat {repeat + 1}/{args.repeats}: "
                + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()),
                flush=True,
            )
        store = work / "ours1"
        ours_bytes = dir_bytes(store)
        tokens_file = (store / "tokens.npy").stat().st_size
        plain_bytes = dir_bytes(work / "plain")
        n_docs, n_tokens = manifest["num_records"], manifest["num_tokens"]
        med = {k: statistics.median(v) for k, v in times.items()}
        med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
        rates = {
            "ours_1": (n_docs / med["ours_1"], n_tokens / med["ours_1"]),
            "ours_2": (n_docs / med["ours_2"], n_tokens / med["ours_2"]),
            "plain": (args.plain_docs / med["plain"], plain_tokens / med["plain"]),
        }
        print()
        print(f"corpus: {source} ({n_docs} docs, {n_tokens} tokens, {len(docs)} rows)")
        print(f"tokenizer: {tokenizer} ; medians of {args.repeats} runs")
        print(
            f"{'variant':<37}{'docs':>6}{'median s':>10}{'docs/s':>9}{'tokens/s':>10}"
            f"{'CPU ms/doc':>12}"
        )
        labels = {
            "plain": "plain (rouge-score + datasets int64)",
            "ours_1": "ours, 1 process",
            "ours_2": "ours, 2 processes",
        }
        for key, label in labels.items():
            count = args.plain_docs if key == "plain" else n_docs
            print(
                f"{label:<37}{count:>6}{med[key]:>10.2f}{rates[key][0]:>9.1f}"
                f"{rates[key][1]:>10.0f}{1000 * med_cpu[key] / count:>12.2f}"
            )
        speedup_1 = rates["ours_1"][0] / rates["plain"][0]
        speedup_2 = rates["ours_2"][0] / rates["plain"][0]
        print(f"per-doc rate vs plain: 1 process x{speedup_1:.1f}, 2 processes x{speedup_2:.1f}")
        print(f"2 processes vs 1: x{rates['ours_2'][0] / rates['ours_1'][0]:.2f}")
        ours_bpt = ours_bytes / n_tokens
        plain_bpt = plain_bytes / plain_tokens
        print(
            f"bytes on disk per token: ours {ours_bpt:.3f} (token ids alone "
            f"{tokens_file / n_tokens:.3f}; offsets + ranking "
            f"{(ours_bytes - tokens_file) / n_tokens:.3f}),"
            f" plain {plain_bpt:.3f}; plain/ours x{plain_bpt / ours_bpt:.1f}"
        )
        per_file = {
            name: round(info["bytes"] / n_tokens, 4) for name, info in manifest["files"].items()
        }
        print(f"per file (bytes/token): {per_file}")
        if args.json:
            from pegasus_gsg.files import write_text_atomic

            write_text_atomic(
                args.json,
                json.dumps(
                    {
                        "median_seconds": med,
                        "docs_per_s": {k: v[0] for k, v in rates.items()},
                        "tokens_per_s": {k: v[1] for k, v in rates.items()},
                        "bytes_per_token": {"ours": ours_bpt, "plain": plain_bpt},
                        "per_file_bytes_per_token": per_file,
                        "runs": times,
                        "cpu_seconds": cpu,
                    },
                    indent=2,
                ),
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Bytes per token and loader speed of the store with a 96,103-id and a 16k vocabulary.

    .venv/bin/python benchmarks/bench_store_bytes.py --tokenizer96 runs/tok96k
    .venv/bin/python benchmarks/bench_store_bytes.py --train96 runs/tok96k   # train it first

All of reuters21578_en is prepared (one store, `prepare pretrain`) with

- 96k: a 96,103-id PEGASUS-layout tokenizer (google/pegasus-large's size), trained with
  `pegasus_gsg.data.tokenization.train_tokenizer` on every text field of every corpus in
  ../shared/data
  (`--train96 DIR`; ~137k texts, 56M characters), stored with the split17 codec (low 16 bits
  per token, positions of the ids with bit 16 set apart; data/store/format.py) and, as
  today's store, with uint32 ids;
- 16k: a 16,000-id tokenizer trained on the first 5,000 Reuters documents (uint16, unchanged).

Reported per store: bytes/token of the ids (tokens.npy, for split17 + high_tokens, record_high) and
of the whole store (every file, manifest included); for the 96k ids the alternatives computed
from the same ids: in-band escapes (ids >= 65,535 as two codes; measured before with its
per-record code offsets: 2.039 ids, 1,637 us per 64-record decode), the same after a frequency
remap (plus the 4-byte rank -> id table of the whole vocabulary) and 17-bit packing (2.125).
Loader speed: samples/s of `PretrainingDataset[i]` (the per-record work of the training
loader: ranking, gap selection, masking) over a fixed random order of --samples records, and
the decode cost of a batch of 64 random records (`record_ids`), medians of --repeats
interleaved rounds.

Measured 2026-12-02 on the shared 2-core machine (load ~10; `--repeats 3`; the 96k tokenizer
trained with --train96 in 53 min): Reuters is 2,695,242 tokens at 96k (38,584 ids used),
3,005,378 at 16k. ids / whole bytes per token: 96k split17 2.056 / 2.402, 96k uint32 (today)
4.000 / 4.346, 16k uint16 2.000 / 2.310. Loader samples/s 4,240 / 5,139 / 4,814; decode of 64
records 1,198 / 333 / 563 us. Alternatives for the 96k ids: in-band escape 2.017 (+ offsets),
frequency remap + escape 2.143, 17-bit packing 2.125.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
TEXT_FIELDS = ("text", "document", "summary", "dialogue", "title", "abstract")


def corpus_texts(data: Path) -> list[str]:
    texts = []
    for path in sorted(data.glob("*/data.jsonl")):
        with path.open(encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                texts.extend(
                    v for k in TEXT_FIELDS if isinstance(v := record.get(k), str) and v.strip()
                )
    return texts


def build(source: Path, tokenizer: Path, out: Path, plain: bool = False) -> dict:
    from pegasus_gsg.data.preparation import PrepareConfig, prepare
    from pegasus_gsg.data.preparation import assemble as assemble_module

    if out.exists():
        shutil.rmtree(out)
    codec = assemble_module.token_codec
    if plain:  # today's store: uint32 ids for a vocabulary over 65,536
        assemble_module.token_codec = lambda vocab_size: None
    try:
        return prepare(
            [str(source)], tokenizer, out, PrepareConfig("pretrain", num_proc=2)
        ).manifest
    finally:
        assemble_module.token_codec = codec


def sizes(out: Path, manifest: dict) -> dict[str, float]:
    tokens = manifest["num_tokens"]
    id_files = ("tokens.npy", "high_tokens.npy", "record_high.npy")
    ids = sum((out / f).stat().st_size for f in id_files if (out / f).exists())
    whole = sum(p.stat().st_size for p in out.iterdir())
    return {"ids": ids / tokens, "whole": whole / tokens}


def loader_rate(stores: dict, samples: int, repeats: int) -> dict[str, dict[str, float]]:
    from pegasus_gsg.data.datasets import ExampleOptions, PretrainingDataset
    from pegasus_gsg.data.store import TokenStore

    opened = {name: TokenStore.open(path) for name, path in stores.items()}
    datasets = {
        name: PretrainingDataset(s, ExampleOptions(), vocab_size=s.vocab_size, seed=0)
        for name, s in opened.items()
    }
    rng = np.random.default_rng(0)
    n = min(len(s) for s in opened.values())
    order = rng.permutation(n)[:samples].tolist()
    batches = [rng.integers(0, n, 64).tolist() for _ in range(50)]
    rates: dict[str, list[float]] = {name: [] for name in stores}
    decode: dict[str, list[float]] = {name: [] for name in stores}
    for _ in range(repeats):
        for name, dataset in datasets.items():
            start = time.perf_counter()
            for i in order:
                dataset[i]
            rates[name].append(len(order) / (time.perf_counter() - start))
            store = opened[name]
            start = time.perf_counter()
            for batch in batches:
                for i in batch:
                    np.asarray(store.record_ids(i), dtype=np.int64)
            decode[name].append((time.perf_counter() - start) / len(batches) * 1e6)
    return {
        name: {
            "samples_per_s": statistics.median(rates[name]),
            "decode_us": statistics.median(decode[name]),
        }
        for name in stores
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--tokenizer96", type=Path, help="a 96,103-id tokenizer dir")
    parser.add_argument("--train96", type=Path, help="train the 96,103-id tokenizer into DIR")
    parser.add_argument("--tokenizer16", type=Path, help="a 16k tokenizer dir (default: train)")
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from pegasus_gsg.data.tokenization import load_tokenizer, train_tokenizer

    source = args.data / "reuters21578_en" / "data.jsonl"
    work = Path(tempfile.mkdtemp(prefix="bench_store_bytes_"))
    try:
        tok96 = args.tokenizer96
        if tok96 is None:
            if args.train96 is None:
                print("give --tokenizer96 DIR or --train96 DIR", file=sys.stderr)
                return 2
            start = time.perf_counter()
            train_tokenizer(corpus_texts(args.data), 96_103, args.train96)
            print(f"trained the 96k tokenizer in {time.perf_counter() - start:.0f} s")
            tok96 = args.train96
        if len(load_tokenizer(tok96)) != 96_103:
            print(f"{tok96} has {len(load_tokenizer(tok96))} ids, not 96,103", file=sys.stderr)
            return 1
        tok16 = args.tokenizer16
        if tok16 is None:
            docs = [json.loads(line)["text"] for line in source.open(encoding="utf-8")][:5000]
            tok16 = work / "tok16"
            train_tokenizer(docs, 16_000, tok16)
        stores = {"96k split17": work / "s96", "96k uint32 (today)": work / "s96plain"}
        stores["16k uint16"] = work / "s16"
        manifests = {
            "96k split17": build(source, tok96, stores["96k split17"]),
            "96k uint32 (today)": build(source, tok96, stores["96k uint32 (today)"], plain=True),
            "16k uint16": build(source, tok16, stores["16k uint16"]),
        }
        results: dict = {name: sizes(stores[name], m) for name, m in manifests.items()}
        from pegasus_gsg.data.store import TokenStore

        plain = TokenStore.open(stores["96k uint32 (today)"])
        ids = np.asarray(plain.tokens)
        counts = np.sort(np.bincount(ids, minlength=plain.vocab_size))[::-1]
        results["96k alternatives"] = {
            "in-band escape": 2 + 2 * float(np.mean(ids >= 0xFFFF)),
            "frequency remap + escape": 2
            + 2 * float(counts[0xFFFF:].sum() / len(ids))
            + 4 * plain.vocab_size / len(ids),
            "17-bit packing": 17 / 8,
            "distinct ids used": len(np.unique(ids)),
        }
        speed = loader_rate(stores, args.samples, args.repeats)
        for name in stores:
            results[name].update(speed[name])
        results["tokens"] = {name: m["num_tokens"] for name, m in manifests.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"all of Reuters ({results['tokens']['16k uint16']:,} tokens at 16k, "
        f"{results['tokens']['96k split17']:,} at 96k)"
    )
    print(
        f"{'store':<20} {'ids B/tok':>9} {'whole B/tok':>11} {'samples/s':>10} {'decode us/64':>12}"
    )
    for name in stores:
        r = results[name]
        print(
            f"{name:<20} {r['ids']:>9.3f} {r['whole']:>11.3f} {r['samples_per_s']:>10,.0f} "
            f"{r['decode_us']:>12.0f}"
        )
    alt = results["96k alternatives"]
    print(
        f"96k ids B/tok, alternatives: in-band escape {alt['in-band escape']:.3f} (+ offsets), "
        f"frequency remap + escape {alt['frequency remap + escape']:.3f}, 17-bit packing "
        f"{alt['17-bit packing']:.3f}; {alt['distinct ids used']:,} ids used"
    )
    if args.json:
        from pegasus_gsg.files import write_text_atomic

        write_text_atomic(args.json, json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

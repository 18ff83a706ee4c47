"""Loader benchmark: throughput, memory per DataLoader worker, and padding, each against its
plain-way baseline in the same run.

Setup (cached under --work-dir, nothing written into the repo): a tokenizer trained on the first
--docs Reuters documents, a ``pretrain`` store of those documents and a ``finetune`` store of
AESLC's train split, both written by pegasus_gsg.data.preparation.

1. Throughput: samples/s through ``DataLoader(PretrainingDataset(store), batch_sampler=
   TokenBudgetBatchSampler, collate_fn=Seq2SeqCollator)`` with 0 and 2 persistent workers,
   median over --repeats epochs after a warm-up epoch, epochs alternating between the store and
   the baseline (the same example builder over the records held as Python lists).
2. Memory per worker: after a full epoch with 1, 2 and 4 persistent workers, each worker's USS
   (pages only it holds) and the PSS summed over main process + workers (psutil
   ``memory_full_info``). The store is memory-mapped, so its pages sit once in the page cache
   whatever the worker count. Baselines: each worker holding its own copy of the token ids, as
   Python lists, and as an in-memory ``datasets`` table with its default int64 ids (plus, in
   both, the rankings as lists). A copy per worker is what a Dataset of lists costs under the
   spawn/forkserver start methods, and what it drifts towards under fork as reference counting
   dirties the copy-on-write pages.
3. Padding: fraction of pad tokens in the batches of one epoch (what Seq2SeqCollator adds),
   encoder inputs and labels, for length-bucketed token-budget batches (exact per-epoch lengths,
   and the fixed estimate ``lengths()``) vs random batches under the same budget and random
   batches of a fixed size. "over budget": batches whose real padded size exceeds max_tokens.
   Target: <= 5% on inputs.
4. Collation: ms per batch of Seq2SeqCollator vs transformers.DataCollatorForSeq2Seq.

Measured on the 2-core dev machine, quiet (``--docs 14925``: all Reuters, 3.2M tokens,
8192-token budget): PSS added per extra worker 11.5 MiB (memmap store) vs 213.6 MiB (lists,
18.6x) and 79.4 MiB (datasets int64 table, 6.9x); a store worker's USS stays 12-15 MiB from 1
to 4 workers. Input padding 0.7% bucketed vs 66% random (Mixed & Stochastic; 33% when
bucketing on the fixed estimate, with 228 of 253 batches over budget); AESLC 0.4% vs 62%.
Throughput 9,546 vs 7,359 samples/s for the lists at 0 workers (1.30x; the store's arrays are
viewed as plain ndarrays, still memory-mapped, because np.memmap's Python-level
``__getitem__`` cost ~30% of an example), 6,709 vs 7,120 at 2 workers (0.94x). Collation:
0.26 ms vs 5.9 ms per batch of 32 (22x). With the default ``--docs 4000`` the same run gave
10.5 vs 47.0 vs 33.3 MiB per worker and 0.96x / 1.03x throughput.

Run: ``.venv/bin/python benchmarks/bench_loader.py`` (2-3 minutes on 2 busy cores; the first run
also trains a tokenizer and prepares the stores, cached in --work-dir).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import datasets
import numpy as np
import psutil
import pyarrow as pa
import torch
import torch.utils.data

from pegasus_gsg.data.datasets import (
    ExampleOptions,
    FinetuneDataset,
    PretrainingDataset,
    Seq2SeqCollator,
    TokenBudgetBatchSampler,
)
from pegasus_gsg.data.preparation import PrepareConfig, prepare
from pegasus_gsg.data.store import TokenStore
from pegasus_gsg.data.tokenization import load_tokenizer, train_tokenizer

REPO = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/pegasus_gsg_bench_loader"))
    p.add_argument("--docs", type=int, default=4000, help="Reuters documents in the store")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--max-tokens", type=int, default=8192, help="token budget per batch")
    p.add_argument("--repeats", type=int, default=5, help="timed epochs per configuration")
    p.add_argument("--num-proc", type=int, default=2, help="prepare processes")
    return p.parse_args()


# --------------------------------------------------------------------------------------- setup
def prepare_stores(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """Tokenizer dir, pretrain store dir, finetune store dir (built once, then reused)."""
    work = args.work_dir / f"docs{args.docs}_v{args.vocab_size}"
    work.mkdir(parents=True, exist_ok=True)
    tok_dir, pre_dir, fine_dir = work / "tokenizer", work / "reuters", work / "aeslc"
    reuters = args.data / "reuters21578_en" / "data.jsonl"
    if not (tok_dir / "tokenizer.json").exists():
        with reuters.open(encoding="utf-8") as f:
            texts = [json.loads(line)["text"] for _, line in zip(range(args.docs), f, strict=False)]
        print(f"training a {args.vocab_size}-id tokenizer on {len(texts)} documents", flush=True)
        train_tokenizer(texts, args.vocab_size, out_dir=tok_dir)
    common = {"num_proc": args.num_proc, "progress": True}
    config = PrepareConfig(kind="pretrain", max_records=args.docs, **common)
    prepare([str(reuters)], tok_dir, pre_dir, config)  # returns at once when already prepared
    config = PrepareConfig(kind="finetune", split="train", **common)
    prepare([str(args.data / "aeslc" / "data.jsonl")], tok_dir, fine_dir, config)
    return tok_dir, pre_dir, fine_dir


# ----------------------------------------------------------------------------------- baselines
def int64_table(store: TokenStore):
    """The store's sentences as an in-memory ``datasets`` table of int64 ids (datasets' default
    integer type), built straight from NumPy so that no Python list outlives the build."""
    sentence_lengths = store.sentence_lengths_flat()
    per_record = np.array([store.num_sentences(i) for i in range(len(store))])
    sentence_offsets = np.concatenate([[0], np.cumsum(sentence_lengths)]).astype(np.int32)
    record_offsets = np.concatenate([[0], np.cumsum(per_record)]).astype(np.int32)
    values = pa.array(np.asarray(store.tokens, dtype=np.int64))
    sentences = pa.ListArray.from_arrays(pa.array(sentence_offsets), values)
    records = pa.ListArray.from_arrays(pa.array(record_offsets), sentences)
    table = datasets.table.InMemoryTable(pa.table({"sentences": records}))
    return datasets.Dataset(table)


class ListRecords:
    """The plain way: every record's sentence ids and ranking as Python lists (or an in-memory
    ``datasets`` table), loaded by each process on its first read. Counts come from the store,
    so a main process that only samples never loads a copy."""

    kind = "pretrain"

    def __init__(self, path: Path, table: bool = False) -> None:
        self.path = path
        self.table = table
        self._store = TokenStore.open(path)
        self._pid: int | None = None

    def load(self) -> None:
        store = self._store
        if self.table:
            self._sentences = int64_table(store)
        else:
            self._sentences = [[s.tolist() for s in store.sentences(i)] for i in range(len(store))]
        self._rankings = [tuple(a.tolist() for a in store.ranking(i)) for i in range(len(store))]
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self._store)

    def sentences(self, i: int) -> list[list[int]]:
        if self._pid != os.getpid():
            self.load()
        return self._sentences[i]["sentences"] if self.table else self._sentences[i]

    def ranking(self, i: int) -> tuple[list[int], list[float]]:
        if self._pid != os.getpid():
            self.load()
        return self._rankings[i]


class BaselineDataset(PretrainingDataset):
    """PretrainingDataset over ListRecords: the same examples, a copy of the ids per process."""

    def __init__(self, records: ListRecords, options: ExampleOptions, vocab_size: int) -> None:
        torch.utils.data.Dataset.__init__(self)
        self._store = records
        self._store_path = records.path
        self.options, self.vocab_size, self.seed = options, vocab_size, 0
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._lengths = None

    def __getstate__(self) -> dict:
        return self.__dict__.copy()


# -------------------------------------------------------------------------------- measurements
def make_loader(dataset, lengths, max_tokens, workers) -> torch.utils.data.DataLoader:
    sampler = TokenBudgetBatchSampler(lengths, max_tokens=max_tokens, seed=0)
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=Seq2SeqCollator(),
        num_workers=workers,
        persistent_workers=workers > 0,
    )


def run_epoch(loader, dataset, epoch: int) -> tuple[int, float]:
    """(samples, seconds) of one epoch through the loader; the sampler's batch list for the
    epoch is computed before the clock starts (timed separately in main)."""
    loader.batch_sampler.set_epoch(epoch)
    dataset.set_epoch(epoch)
    len(loader.batch_sampler)
    start = time.perf_counter()
    samples = sum(len(batch["input_ids"]) for batch in loader)
    return samples, time.perf_counter() - start


def throughput(datasets: dict, lengths, max_tokens, workers, repeats) -> dict[str, float]:
    """Median samples/s per dataset; epochs alternate between the datasets so that load from
    other processes on the machine hits both alike."""
    loaders = {name: make_loader(ds, lengths, max_tokens, workers) for name, ds in datasets.items()}
    for name, loader in loaders.items():
        run_epoch(loader, datasets[name], 0)  # warm-up: starts workers, faults pages in
    rates: dict[str, list[float]] = {name: [] for name in datasets}
    for epoch in range(1, repeats + 1):
        for name, loader in loaders.items():
            samples, seconds = run_epoch(loader, datasets[name], epoch)
            rates[name].append(samples / seconds)
    return {name: statistics.median(r) for name, r in rates.items()}


def memory(dataset, lengths, max_tokens, workers) -> tuple[float, float]:
    """(median worker USS, PSS of main + workers), MiB, after one full epoch."""
    loader = make_loader(dataset, lengths, max_tokens, workers)
    run_epoch(loader, dataset, 0)
    pids = [w.pid for w in loader._iterator._workers]  # the persistent worker processes
    infos = [psutil.Process(pid).memory_full_info() for pid in pids]
    main = psutil.Process().memory_full_info()
    del loader
    uss = statistics.median(i.uss for i in infos) / MiB
    pss = (main.pss + sum(i.pss for i in infos)) / MiB
    return uss, pss


def pad_fraction(batches: list[np.ndarray], lengths: np.ndarray) -> tuple[float, float]:
    """(pad tokens / all tokens over the epoch, median per-batch pad fraction)."""
    real = np.array([lengths[b].sum() for b in batches], dtype=np.float64)
    padded = np.array([len(b) * lengths[b].max() for b in batches], dtype=np.float64)
    return float(1 - real.sum() / padded.sum()), float(np.median(1 - real / padded))


def random_budget_batches(lengths, max_tokens, rng) -> list[np.ndarray]:
    """Shuffled order, a batch grows while batch size x its longest stays within the budget."""
    batches, batch, longest = [], [], 0
    for i in rng.permutation(len(lengths)):
        if batch and (len(batch) + 1) * max(longest, lengths[i]) > max_tokens:
            batches.append(np.array(batch))
            batch, longest = [], 0
        batch.append(i)
        longest = max(longest, lengths[i])
    return [*batches, np.array(batch)]


def padding_rows(name, dataset, bucketings, max_tokens) -> list[tuple]:
    """One row per batching of ``dataset``'s epoch 0: length-bucketed by each of
    ``bucketings`` (label -> lengths or lengths function), then the random baselines. Pad
    fractions are measured on the real examples of the epoch."""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(0)
    examples = [dataset[i] for i in range(len(dataset))]
    inputs = np.array([len(e["input_ids"]) for e in examples])
    labels = np.array([len(e["labels"]) for e in examples])
    candidates = {}
    for label, lengths in bucketings.items():
        sampler = TokenBudgetBatchSampler(lengths, max_tokens=max_tokens, seed=0)
        candidates[label] = [np.array(b) for b in sampler]
    rng = np.random.default_rng(0)
    candidates["random, token budget"] = random_budget_batches(inputs, max_tokens, rng)
    size = int(np.median([len(b) for b in next(iter(candidates.values()))]))
    perm = rng.permutation(len(inputs))
    candidates[f"random, {size} per batch"] = [
        perm[i : i + size] for i in range(0, len(perm), size)
    ]
    rows = []
    for label, batches in candidates.items():
        over = sum(len(b) * inputs[b].max() > max_tokens for b in batches)
        rows.append(
            (name, label, len(batches), over, *pad_fraction(batches, inputs),
             pad_fraction(batches, labels)[0], _pad_both(batches, inputs, labels))
        )  # fmt: skip
    return rows


def _pad_both(batches, inputs, labels) -> float:
    """Pad fraction over encoder inputs and labels together."""
    real = sum(int(inputs[b].sum() + labels[b].sum()) for b in batches)
    padded = sum(len(b) * int(inputs[b].max() + labels[b].max()) for b in batches)
    return 1 - real / padded


def collate_ms(features: list[dict], tokenizer, batch_size: int, repeats: int = 30):
    from transformers import DataCollatorForSeq2Seq

    ours, theirs = Seq2SeqCollator(), DataCollatorForSeq2Seq(tokenizer, padding=True)
    batches = [features[i : i + batch_size] for i in range(0, len(features), batch_size)]
    batches = batches[:repeats]

    def per_batch(fn):
        times = []
        for batch in batches:
            start = time.perf_counter()
            fn(batch)
            times.append(time.perf_counter() - start)
        return 1000 * statistics.median(times)

    a = ours(batches[0])
    b = theirs([dict(f) for f in batches[0]])
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    return per_batch(ours), per_batch(lambda fs: theirs([dict(f) for f in fs]))


# ---------------------------------------------------------------------------------------- main
def main() -> int:
    args = parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="This DataLoader will create")  # 4 workers, 2 cores
    tok_dir, pre_dir, fine_dir = prepare_stores(args)
    tokenizer = load_tokenizer(tok_dir)
    store = TokenStore.open(pre_dir, tokenizer=tokenizer)
    fine = TokenStore.open(fine_dir, tokenizer=tokenizer)
    options = ExampleOptions(mixed_gsr=(0.15, 0.45), score_noise=0.2)
    dataset = PretrainingDataset(store, options, vocab_size=len(tokenizer))
    start = time.perf_counter()
    dataset.epoch_lengths(0)
    lengths_us = 1e6 * (time.perf_counter() - start) / len(dataset)
    print(
        f"\npretrain store: {len(store)} Reuters docs, {int(store.lengths().sum())} tokens "
        f"({store.dtype}), Mixed & Stochastic options (gsr 0.15-0.45, noise 0.2); finetune "
        f"store: {len(fine)} AESLC pairs; budget {args.max_tokens} tokens per batch\n"
        f"epoch_lengths (exact lengths of an epoch, main process): {lengths_us:.0f} us/example\n"
    )

    print("== throughput (samples/s through DataLoader + sampler + collator, median of",
          args.repeats, "epochs)")  # fmt: skip
    print(f"{'workers':>8} {'memmap store':>13} {'python lists':>13} {'ratio':>6}")
    for workers in (0, 2):
        base_ds = BaselineDataset(ListRecords(pre_dir), options, len(tokenizer))
        rates = throughput(
            {"store": dataset, "lists": base_ds},
            dataset.epoch_lengths,
            args.max_tokens,
            workers,
            args.repeats,
        )
        ours, base = rates["store"], rates["lists"]
        print(f"{workers:>8} {ours:>13.0f} {base:>13.0f} {ours / base:>6.2f}", flush=True)

    print("\n== memory after one epoch (MiB): median worker USS | PSS of main + workers")
    kinds = {"store": "memmap store", "lists": "python lists", "table": "datasets int64"}
    print(f"{'workers':>8} " + " ".join(f"{v:>22}" for v in kinds.values()))
    table: dict[tuple[str, int], tuple[float, float]] = {}
    for workers in (1, 2, 4):
        cells = []
        for kind in kinds:
            ds = dataset
            if kind != "store":
                records = ListRecords(pre_dir, table=kind == "table")
                ds = BaselineDataset(records, options, len(tokenizer))
            uss, pss = memory(ds, dataset.epoch_lengths, args.max_tokens, workers)
            table[kind, workers] = (uss, pss)
            cells.append(f"{uss:>9.1f} | {pss:>9.1f}")
        print(f"{workers:>8} " + " ".join(f"{c:>22}" for c in cells), flush=True)
    growth = {k: (table[k, 4][1] - table[k, 1][1]) / 3 for k in kinds}
    print(
        "PSS added per extra worker (1 -> 4 workers): "
        + ", ".join(f"{kinds[k]} {v:.1f} MiB" for k, v in growth.items())
        + f"; lists/store {growth['lists'] / growth['store']:.1f}x, "
        f"table/store {growth['table'] / growth['store']:.1f}x"
    )

    print("\n== padding (fraction of pad tokens in the batches of one epoch)")
    print(
        f"{'data':>14} {'batching':>26} {'batches':>7} {'over budget':>11} "
        f"{'inputs':>7} {'(median)':>8} {'labels':>7} {'both':>6}"
    )
    fixed = PretrainingDataset(store, ExampleOptions(gsr=0.3), vocab_size=len(tokenizer))
    finetune = FinetuneDataset(fine, max_input_len=512, max_target_len=64)
    rows = padding_rows(
        "reuters M&S",
        dataset,
        {
            "bucketed, epoch_lengths": dataset.epoch_lengths,
            "bucketed, lengths()": dataset.lengths(),
        },
        args.max_tokens,
    )
    rows += padding_rows("reuters gsr .3", fixed, {"bucketed": fixed.lengths()}, args.max_tokens)
    rows += padding_rows("aeslc", finetune, {"bucketed": finetune.lengths()}, args.max_tokens)
    for name, label, n, over, in_all, in_med, lab_all, both in rows:
        print(
            f"{name:>14} {label:>26} {n:>7} {over:>11} {in_all:>7.1%} {in_med:>8.1%} "
            f"{lab_all:>7.1%} {both:>6.1%}"
        )

    print("\n== collation (ms per batch of 32 AESLC pairs, median)")
    features = [finetune[i] for i in range(min(len(finetune), 32 * 30))]
    ours, theirs = collate_ms(features, tokenizer, 32)
    print(f"Seq2SeqCollator {ours:.3f}  DataCollatorForSeq2Seq {theirs:.3f}  "
          f"ratio {theirs / ours:.1f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
